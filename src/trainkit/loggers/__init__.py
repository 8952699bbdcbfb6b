"""trainkit.loggers."""
