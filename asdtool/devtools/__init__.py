"""Developer tools for the repository itself (not part of the `asdtool` command line)."""
