"""``python -m delibench`` (and ``torchrun -m delibench``) runs the CLI."""

from delibench.cli.app import entry

entry()
