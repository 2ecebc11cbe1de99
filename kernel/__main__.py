"""``python -m delibench`` (and ``torchrun -m delibench``) runs the CLI."""

import sys

from delibench.cli.app import main

sys.exit(main())
