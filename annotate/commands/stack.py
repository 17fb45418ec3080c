"""``python -m annotate stack``: a local Argilla without Docker (install, up, status, down)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from annotate.cli import ToolOption, cli, fail

stack_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                        help="A local Argilla 2.8 (Redis, osmem and argilla-server) or, with --tool labelstudio, "
                             "Label Studio 1.23, without Docker, on loopback ports, data in SQLite. The other "
                             "commands find it by its state file when ARGILLA_API_URL (LABEL_STUDIO_URL) is unset. "
                             "Docker alternative for Argilla: docker/docker-compose.yml.")
cli.add_typer(stack_app, name="stack")

State = Annotated[Optional[Path], typer.Option(
    "--state", help="State file of the stack (env ANNOTATE_STACK_STATE, ANNOTATE_LS_STACK_STATE; default "
                    "~/.cache/zeroshot-preannotate/stack/stack.json, labelstudio.json).", show_default=False)]


def _module(tool: str | None):
    """The stack module of the tool (``annotate.stack`` or ``annotate.labelstudio.stack``)."""
    import os

    tool = tool or os.environ.get("ANNOTATE_TOOL") or "argilla"
    if tool not in ("argilla", "labelstudio"):
        raise fail(f"--tool {tool!r}: give argilla or labelstudio", 2)
    if tool == "labelstudio":
        from annotate.labelstudio import stack
    else:
        from annotate import stack
    return stack


def _state(state: Path | None, tool: str | None = None) -> Path:
    return state or _module(tool).default_state_path()


def _stack_class(tool: str | None):
    module = _module(tool)
    return module.LabelStudioStack if hasattr(module, "LabelStudioStack") else module.ArgillaStack


@stack_app.command()
def install(tool: ToolOption = None) -> None:
    """Create .venv-argilla (argilla-server 2.8.0, osmem-server) or, with --tool labelstudio, .venv-labelstudio
    (label-studio 1.23.2) if missing. Redis comes from the system (apt-get install redis-server)."""
    stack = _module(tool)
    stack.install()
    reason = stack.missing()
    if reason:
        raise fail(reason)
    typer.echo(f"installed: {stack.VENV}")


@stack_app.command()
def up(
    tool: ToolOption = None,
    state: State = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Where SQLite, search data and logs go (default: "
                                                     "beside the state file).", show_default=False)] = None,
    print_env: Annotated[bool, typer.Option("--print-env", help="Also print `export` lines for shells and "
                                            "scripts.")] = False,
) -> None:
    """Start a stack (Argilla: 20-30 s; Label Studio: seconds, a minute the first time) and record it; a stack
    already answering at the state file is reused."""
    stack_class = _stack_class(tool)
    path = _state(state, tool)
    if path.exists():
        running = stack_class.load(path)
        if running.answering():
            _describe(running, path, "already running", print_env)
            return
        running.stop()  # whatever is left of a dead stack
    data = data_dir or path.with_name(path.stem + "-data")
    try:
        stack = stack_class.start(data)
    except RuntimeError as exc:
        raise fail(str(exc)) from None
    stack.save(path)
    _describe(stack, path, "started", print_env)


@stack_app.command()
def status(tool: ToolOption = None, state: State = None) -> None:
    """Say whether the recorded stack answers (exit 1 when it does not)."""
    path = _state(state, tool)
    if not path.exists():
        command = "python -m annotate stack up" + (" --tool labelstudio" if _stack_class(tool).__name__ ==
                                                   "LabelStudioStack" else "")
        raise fail(f"no stack recorded at {path}: start one with `{command}`")
    stack = _stack_class(tool).load(path)
    if not stack.answering():
        raise fail(f"the stack recorded at {path} does not answer at {stack.url}: `python -m annotate stack down`, "
                   "then `up`")
    _describe(stack, path, "running", False)


@stack_app.command()
def down(tool: ToolOption = None, state: State = None) -> None:
    """Stop the processes of the recorded stack (its data folder stays)."""
    path = _state(state, tool)
    if not path.exists():
        raise fail(f"no stack recorded at {path}")
    _stack_class(tool).load(path).stop()
    path.unlink()
    typer.echo(f"stopped the stack recorded at {path}")


def _describe(stack, path: Path, what: str, print_env: bool) -> None:
    if hasattr(stack, "workspace"):
        typer.echo(f"Argilla {what} at {stack.url}")
        typer.echo(f"  UI login: {stack.username} / {stack.password}   (workspace {stack.workspace})")
        typer.echo(f"  state: {path} (the annotate commands read it when ARGILLA_API_URL is unset)")
    else:
        typer.echo(f"Label Studio {what} at {stack.url}")
        typer.echo(f"  UI login: {stack.username} / {stack.password}   (API token {stack.api_key})")
        typer.echo(f"  state: {path} (the annotate commands read it when LABEL_STUDIO_URL is unset)")
    typer.echo(f"  data and logs: {stack.data_dir}")
    if print_env:
        for key, value in stack.env().items():
            typer.echo(f"export {key}={value}")
