"""The command line: a thin layer over the library (`main` is the entry point)."""
