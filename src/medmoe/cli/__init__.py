"""The ``medmoe`` command line (one module per sub-command)."""
