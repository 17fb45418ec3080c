"""``python -m annotate export``: its options and what it does with them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from annotate.cli import (
    ApiKey,
    ApiUrl,
    DatasetName,
    LogLevel,
    ToolOption,
    Workspace,
    cli,
    fail,
    settings_from_env,
    setup_logging,
    write_json,
)


@cli.command()
def export(
    output: Annotated[Path, typer.Argument(metavar="OUTPUT", help="Training file to write (a folder with --format "
                                           "hf).", show_default=False)],
    dataset: DatasetName = None,
    tool: ToolOption = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    workspace: Workspace = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl, parquet or hf (a Hugging Face datasets folder).")]
    = "jsonl",
    include_discarded: Annotated[bool, typer.Option("--include-discarded", help="Also export discarded records "
                                                    "(status 'discarded', label null).")] = False,
    humans_only: Annotated[bool, typer.Option("--humans-only", help="Leave out the suggestions accepted in bulk "
                                              "(python -m annotate accept --apply; source 'auto-accept').")] = False,
    confusion_png: Annotated[Optional[Path], typer.Option(help="Where to save the confusion matrix PNG; default: "
                                                          "OUTPUT with suffix .confusion.png.", show_default=False)]
    = None,
    summary_json: Annotated[Optional[Path], typer.Option(help="Also write the summary here as JSON.",
                                                         show_default=False)] = None,
    log_level: LogLevel = "info",
) -> None:
    """Export records people reviewed (submitted, optionally discarded) with human labels and teacher scores.

    Each row's source is human or auto-accept (a suggestion accepted in bulk by python -m annotate accept);
    --humans-only leaves the latter out. Prints counts by status, the accuracy of the suggestions on records people
    submitted, and the confusion matrix (also saved as a PNG).
    """
    from annotate.client import ArgillaRefused, ArgillaUnavailable, connect
    from annotate.dataset import DatasetMismatch
    from annotate.export import FORMATS
    from annotate.export import export as run_export

    settings = settings_from_env(api_url=api_url, api_key=api_key, workspace=workspace, dataset=dataset, tool=tool)
    if settings.tool == "labelstudio":
        from annotate.commands import labelstudio

        setup_logging(log_level)
        return labelstudio.export(settings, output, fmt=fmt, humans_only=humans_only,
                                  include_discarded=include_discarded, summary_json=summary_json)
    try:
        settings.require("api_url", "api_key", "dataset")
        if fmt not in FORMATS:
            raise ValueError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    png = confusion_png or output.with_name(output.name.split(".")[0] + ".confusion.png")
    try:
        client = connect(settings.api_url, settings.api_key)
        setup_logging(log_level)
        summary = run_export(client, settings.dataset, settings.workspace, output, fmt=fmt,
                             include_discarded=include_discarded, confusion_png=png, humans_only=humans_only)
    except (ArgillaRefused, ArgillaUnavailable, DatasetMismatch) as exc:
        raise fail(str(exc)) from None
    typer.echo(summary.render())
    write_json(summary_json, summary.to_dict())
