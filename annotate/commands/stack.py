"""``python -m annotate stack``: a local Argilla without Docker (install, up, status, down)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from annotate.cli import cli, fail

stack_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                        help="A local Argilla 2.8 without Docker: Redis, osmem and argilla-server on loopback "
                             "ports, data in SQLite. The other commands find it by its state file when "
                             "ARGILLA_API_URL is unset. Docker alternative: docker/docker-compose.yml.")
cli.add_typer(stack_app, name="stack")

State = Annotated[Optional[Path], typer.Option(
    "--state", help="State file of the stack (env ANNOTATE_STACK_STATE; default "
                    "~/.cache/zeroshot-preannotate/stack/stack.json).", show_default=False)]


def _state(state: Path | None) -> Path:
    from annotate.stack import default_state_path

    return state or default_state_path()


@stack_app.command()
def install() -> None:
    """Create .venv-argilla (argilla-server 2.8.0, osmem-server) if missing. Redis comes from the system
    (apt-get install redis-server)."""
    from annotate import stack

    stack.install()
    reason = stack.missing()
    if reason:
        raise fail(reason)
    typer.echo(f"installed: {stack.VENV}")


@stack_app.command()
def up(
    state: State = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Where SQLite, search data and logs go (default: "
                                                     "beside the state file).", show_default=False)] = None,
    print_env: Annotated[bool, typer.Option("--print-env", help="Also print `export` lines for shells and "
                                            "scripts.")] = False,
) -> None:
    """Start a stack (20-30 s) and record it; a stack already answering at the state file is reused."""
    from annotate.stack import ArgillaStack

    path = _state(state)
    if path.exists():
        running = ArgillaStack.load(path)
        if running.answering():
            _describe(running, path, "already running", print_env)
            return
        running.stop()  # whatever is left of a dead stack
    data = data_dir or path.with_name(path.stem + "-data")
    try:
        stack = ArgillaStack.start(data)
    except RuntimeError as exc:
        raise fail(str(exc)) from None
    stack.save(path)
    _describe(stack, path, "started", print_env)


@stack_app.command()
def status(state: State = None) -> None:
    """Say whether the recorded stack answers (exit 1 when it does not)."""
    from annotate.stack import ArgillaStack

    path = _state(state)
    if not path.exists():
        raise fail(f"no stack recorded at {path}: start one with `python -m annotate stack up`")
    stack = ArgillaStack.load(path)
    if not stack.answering():
        raise fail(f"the stack recorded at {path} does not answer at {stack.url}: `python -m annotate stack down`, "
                   "then `up`")
    _describe(stack, path, "running", False)


@stack_app.command()
def down(state: State = None) -> None:
    """Stop the processes of the recorded stack (its data folder stays)."""
    from annotate.stack import ArgillaStack

    path = _state(state)
    if not path.exists():
        raise fail(f"no stack recorded at {path}")
    ArgillaStack.load(path).stop()
    path.unlink()
    typer.echo(f"stopped the stack recorded at {path}")


def _describe(stack, path: Path, what: str, print_env: bool) -> None:
    typer.echo(f"Argilla {what} at {stack.url}")
    typer.echo(f"  UI login: {stack.username} / {stack.password}   (workspace {stack.workspace})")
    typer.echo(f"  state: {path} (the annotate commands read it when ARGILLA_API_URL is unset)")
    typer.echo(f"  data and logs: {stack.data_dir}")
    if print_env:
        for key, value in stack.env().items():
            typer.echo(f"export {key}={value}")
