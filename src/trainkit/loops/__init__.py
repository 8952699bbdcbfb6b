"""trainkit.loops."""
