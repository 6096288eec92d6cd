"""Command groups of the ``prmforge`` CLI (see flows/cli.py)."""
