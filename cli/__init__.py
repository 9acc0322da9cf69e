"""The `incl` command line."""
