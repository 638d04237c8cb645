"""The `detailsr` command line: one module per sub-command."""
