"""trainkit.callbacks."""
