"""``python -m annotate accept``: its options and what it does with them."""

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
    connect_or_fail,
    fail,
    settings_from_env,
    setup_logging,
    write_json,
)


@cli.command()
def accept(
    dataset: DatasetName = None,
    tool: ToolOption = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    workspace: Workspace = None,
    precision: Annotated[float, typer.Option(help="Precision to certify for the accepted suggestions, in (0, 1).")]
    = 0.95,
    confidence: Annotated[float, typer.Option(help="Confidence of the one-sided lower bound on that precision "
                                              "(Clopper-Pearson), in (0, 1).")] = 0.95,
    scope: Annotated[str, typer.Option(help="auto: one threshold and sample per label that has the records for "
                                       "it, one for the other labels together; label: one per label (each label's "
                                       "precision certified); pooled: one for all labels.")] = "auto",
    do_apply: Annotated[bool, typer.Option("--apply", help="Accept the certified suggestions: responses of the user "
                                           "'auto-accept' and metadata accepted_by / accept_threshold / "
                                           "accept_revision.")] = False,
    undo: Annotated[bool, typer.Option("--undo", help="Remove every auto-accepted response and its metadata.")]
    = False,
    batch_size: Annotated[int, typer.Option(help="Records per write request.", min=1, max=500)] = 256,
    concurrency: Annotated[int, typer.Option(help="Write requests in flight.", min=1, max=16)] = 2,
    summary_json: Annotated[Optional[Path], typer.Option(help="Also write the summary here as JSON.",
                                                         show_default=False)] = None,
    log_level: LogLevel = "info",
) -> None:
    """Accept pending suggestions in bulk where their precision is certified (dry run unless --apply).

    Per label, a random certification sample of the label's highest-scoring pending records is flagged
    (metadata certify = 1, review link printed); once people reviewed it, the lowest score threshold whose
    one-sided Clopper-Pearson lower bound reaches --precision is certified (fixed-sequence tests over thresholds,
    annotate/acceptance.py). Prints per label and overall: threshold, records accepted, estimated precision with its
    interval, and the reviews behind it. --apply submits the certified suggestions as responses of the user
    'auto-accept' (created when missing); records with a human response are never touched, a rerun writes only
    what is missing. --undo removes exactly those responses and their metadata.
    """
    from annotate.accept import AcceptError
    from annotate.accept import run as run_accept
    from annotate.client import ArgillaRefused, ArgillaUnavailable

    settings = settings_from_env(api_url=api_url, api_key=api_key, workspace=workspace, dataset=dataset, tool=tool)
    if settings.tool == "labelstudio":
        from annotate.commands import labelstudio

        if do_apply and undo:
            raise fail("give --apply or --undo, not both", 2)
        for name, value in (("--precision", precision), ("--confidence", confidence)):
            if not 0 < value < 1:
                raise fail(f"{name} {value:g}: give a number strictly between 0 and 1, e.g. 0.95", 2)
        if scope not in ("auto", "label", "pooled"):
            raise fail(f"--scope {scope!r}: give auto, label or pooled", 2)
        setup_logging(log_level)
        return labelstudio.accept(settings, target=precision, confidence=confidence, scope=scope,
                                  mode="apply" if do_apply else "undo" if undo else "dry run",
                                  summary_json=summary_json)
    try:
        settings.require("api_url", "api_key", "dataset")
        if do_apply and undo:
            raise ValueError("give --apply or --undo, not both")
        for name, value in (("--precision", precision), ("--confidence", confidence)):
            if not 0 < value < 1:
                raise ValueError(f"{name} {value:g}: give a number strictly between 0 and 1, e.g. 0.95")
        if scope not in ("auto", "label", "pooled"):
            raise ValueError(f"--scope {scope!r}: give auto, label or pooled")
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    client = connect_or_fail(settings)
    setup_logging(log_level)
    mode = "apply" if do_apply else "undo" if undo else "dry run"
    try:
        summary = run_accept(client, settings.dataset, settings.workspace, settings.api_url, target=precision,
                             confidence=confidence, scope=scope, mode=mode, batch_size=batch_size,
                             concurrency=concurrency)
    except AcceptError as exc:
        raise fail(str(exc), 2) from None
    except (ArgillaRefused, ArgillaUnavailable) as exc:
        raise fail(f"accept stopped: {exc} (run it again: it writes what is left)") from None
    typer.echo(summary.render())
    write_json(summary_json, summary.to_dict())
