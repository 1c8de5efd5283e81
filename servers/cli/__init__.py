"""The command line: `pagelens` and its commands."""
