"""The commands of ``python -m annotate``, one module each; importing this package registers them all on
:data:`annotate.cli.cli` (shared options and helpers live in :mod:`annotate.cli`)."""

from annotate.commands import (  # noqa: F401  (registration)
    accept,
    adapt,
    export,
    labelstudio,
    push,
    refresh,
    score,
    simulate,
    stack,
    suspects,
)
