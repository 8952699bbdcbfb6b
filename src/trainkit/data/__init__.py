"""trainkit.data."""
