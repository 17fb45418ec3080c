"""The tests' Argilla stack is the product's own local stack (:mod:`annotate.stack`); this name stays for the
tests, benchmarks and scripts that import it."""

from annotate.stack import (  # noqa: F401
    PACKAGES,
    USERNAME,
    VENV,
    WORKSPACE,
    ArgillaStack,
    default_state_path,
    free_port,
    install,
    missing,
)
