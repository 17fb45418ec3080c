"""``python -m annotate``: the command line (commands in :mod:`annotate.commands`, shared options in
:mod:`annotate.cli`)."""

from __future__ import annotations

import sys

import annotate.commands  # noqa: F401  (registers every command on the app)
from annotate.cli import cli

if __name__ == "__main__":
    sys.exit(cli())
