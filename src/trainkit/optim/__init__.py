"""trainkit.optim."""
