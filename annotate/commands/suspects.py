"""``python -m annotate suspects``: its options and what it does with them."""

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


@cli.command("suspects")
def suspects(
    dataset: DatasetName = None,
    tool: ToolOption = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    workspace: Workspace = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Compute and print; write nothing to Argilla.")] = False,
    top: Annotated[int, typer.Option(help="How many of the most suspect records to print.", min=0)] = 10,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Local cache (env ANNOTATE_CACHE_DIR; default "
                                                      "~/.cache/zeroshot-preannotate/annotate).",
                                                      show_default=False)] = None,
    batch_size: Annotated[int, typer.Option(help="Records per update request.", min=1, max=500)] = 256,
    concurrency: Annotated[int, typer.Option(help="Update requests in flight.", min=1, max=16)] = 2,
    summary_json: Annotated[Optional[Path], typer.Option(help="Also write the summary here as JSON.",
                                                         show_default=False)] = None,
    log_level: LogLevel = "info",
) -> None:
    """Flag the submitted labels that look wrong (cleanlab on the adapted head's out-of-fold probabilities).

    Refits the head refresh fits once per fold of the submitted records, without that fold's reviews, and scores
    each submitted label with confident learning (Northcutt et al. 2021), or CROWDLAB (Goh et al. 2022) when
    records have responses from several annotators. Writes the float metadata `suspect` (0-1, higher = more
    likely wrong; the property is added to the dataset if missing) on the submitted records, prints the summary
    per label and per annotator, the most suspect records and a review link sorted by `suspect`, descending.
    """
    from annotate.cache import DatasetCache
    from annotate.client import ArgillaRefused, ArgillaUnavailable
    from annotate.suspects import SuspectsError
    from annotate.suspects_argilla import suspects as run_suspects
    from annotate.upsert import UpsertFailed

    settings = settings_from_env(api_url=api_url, api_key=api_key, workspace=workspace, dataset=dataset,
                                 cache_dir=cache_dir, tool=tool)
    if settings.tool == "labelstudio":
        from annotate.commands import labelstudio

        setup_logging(log_level)
        return labelstudio.suspects(settings, dry_run=dry_run, summary_json=summary_json)
    try:
        settings.require("api_url", "api_key", "dataset")
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    client = connect_or_fail(settings)
    setup_logging(log_level)
    cache = DatasetCache(settings.cache_dir, settings.api_url, settings.workspace, settings.dataset)
    try:
        summary = run_suspects(client, settings.dataset, settings.workspace, settings.api_url, cache,
                               dry_run=dry_run, top=top, batch_size=batch_size, concurrency=concurrency)
    except SuspectsError as exc:
        raise fail(str(exc), 2) from None
    except (ArgillaRefused, ArgillaUnavailable) as exc:
        raise fail(str(exc)) from None
    except UpsertFailed as exc:
        raise fail(f"suspects stopped: {exc} (run it again: it writes what is left)") from None
    typer.echo(summary.render())
    write_json(summary_json, summary.to_dict())
