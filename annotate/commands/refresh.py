"""``python -m annotate refresh``: its options and what it does with them."""

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
    embedding_scorer,
    fail,
    head_config,
    read_labels,
    settings_from_env,
    setup_logging,
    write_json,
)


@cli.command()
def refresh(
    dataset: DatasetName = None,
    tool: ToolOption = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    workspace: Workspace = None,
    label: Annotated[Optional[list[str]], typer.Option("--label", "-l", help="Expected labels (checked against the "
                                                       "dataset's; optional).", show_default=False)] = None,
    labels_file: Annotated[Optional[Path], typer.Option(help="File with the expected labels, one a line.",
                                                        show_default=False)] = None,
    embed: Annotated[bool, typer.Option("--embed", help="Embed records that have neither a cached embedding nor a "
                                        "vector in Argilla (datasets pushed before adaptation) with the scorer.")]
    = False,
    service_url: Annotated[Optional[str], typer.Option(help="With --embed: the service that embeds (env "
                                                       "ANNOTATE_SERVICE_URL); unset: in-process.",
                                                       show_default=False)] = None,
    head_output: Annotated[Optional[Path], typer.Option(help="Where to save the head directory (default: in the "
                                                        "cache, next to the pool).", show_default=False)] = None,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Local cache (env ANNOTATE_CACHE_DIR; default "
                                                      "~/.cache/zeroshot-preannotate/annotate).",
                                                      show_default=False)] = None,
    batch_size: Annotated[int, typer.Option(help="Records per update request.", min=1, max=500)] = 256,
    concurrency: Annotated[int, typer.Option(help="Update requests in flight.", min=1, max=16)] = 2,
    min_score_change: Annotated[float, typer.Option(help="Rewrite a pending suggestion whose label stays only when "
                                                    "its score moved by more than this (0: on any change).",
                                                    min=0.0, max=1.0)] = 0.02,
    watch: Annotated[bool, typer.Option("--watch", help="Keep running: refresh again whenever --every new "
                                        "responses arrived; Ctrl-C stops.")] = False,
    every: Annotated[int, typer.Option(help="With --watch: new responses that trigger a refresh.", min=1)] = 25,
    poll_seconds: Annotated[float, typer.Option(help="With --watch: seconds between polls of Argilla.", min=0.1)]
    = 10.0,
    finetune: Annotated[bool, typer.Option("--finetune/--no-finetune", help="Use the newest finished encoder "
                                           "fine-tune where it beats the head on held-out reviews; with --watch, "
                                           "also start one in the background once enough reviews arrived.")] = True,
    finetune_min_reviews: Annotated[int, typer.Option(help="With --watch: submitted records before the first "
                                                      "background fine-tune.", min=2)] = 200,
    finetune_every: Annotated[int, typer.Option(help="With --watch: further submitted records before the next "
                                                "fine-tune.", min=1)] = 200,
    finetune_time_budget: Annotated[float, typer.Option(help="Seconds of training per fine-tune (scoring the pending "
                                                        "records comes after).", min=1.0)] = 600.0,
    finetune_threads: Annotated[int, typer.Option(help="Torch threads of the background fine-tune.", min=1)] = 1,
    finetune_margin: Annotated[float, typer.Option(help="Swap the fine-tuned encoder in when its held-out accuracy "
                                                   "beats the head's by more than this, on top of the paired test "
                                                   "(negative: the accuracies alone decide, even when it does not, "
                                                   "for trials).", min=-1.0, max=1.0)] = 0.0,
    finetune_alpha: Annotated[float, typer.Option(help="Swap only when McNemar's exact test on the held-out reviews "
                                                  "(fine-tuned against head) gives a p-value below this, the "
                                                  "fine-tune right on more of the reviews they disagree on.",
                                                  min=0.0, max=1.0)] = 0.1,
    summary_json: Annotated[Optional[Path], typer.Option(help="Also write the (last) summary here as JSON.",
                                                         show_default=False)] = None,
    log_level: LogLevel = "info",
) -> None:
    """Refit the adapted head on the reviewed records and update the pending records' suggestions in Argilla.

    Submitted labels train the head (discarded records are never pseudo-labelled); every pending record is
    re-scored from the cached embeddings and only those whose suggestion changed are updated (in bulk), so a
    second refresh without new reviews writes nothing. Submitted, discarded and draft records are never touched.
    Prints the cross-validated accuracy on the reviewed records, the audit-sample estimate of the pending
    suggestions' accuracy (Wilson 95% interval) and review links (lowest score, smallest margin, audit sample).

    With --watch, once --finetune-min-reviews records are submitted, the encoder is fine-tuned on them in a
    background process (annotate/finetune_job.py) while the head keeps refreshing; when it finishes and beats the
    head on held-out reviews, the pending records take its suggestions (agent ...:encoder-finetune:<revision>).
    """
    from annotate.cache import CacheBusy, DatasetCache
    from annotate.client import ArgillaRefused, ArgillaUnavailable, find_dataset
    from annotate.finetune_job import BackgroundFinetune, FinetuneSettings
    from annotate.refresh import RefreshError, count_reviewed
    from annotate.refresh import refresh as run_refresh
    from annotate.refresh import watch as run_watch
    from annotate.upsert import UpsertFailed
    from pool.scorers import ScoringError

    settings = settings_from_env(api_url=api_url, api_key=api_key, workspace=workspace, dataset=dataset,
                         service_url=service_url, cache_dir=cache_dir, tool=tool)
    if settings.tool == "labelstudio":
        from annotate.commands import labelstudio

        try:
            labels = read_labels(label, labels_file) if (label or labels_file) else None
        except ValueError as exc:
            raise fail(str(exc), 2) from None
        setup_logging(log_level)
        return labelstudio.refresh(settings, labels=labels, min_score_change=min_score_change,
                                   head_output=head_output, summary_json=summary_json, watch=watch, every=every,
                                   poll_seconds=poll_seconds)
    try:
        settings.require("api_url", "api_key", "dataset")
        labels = read_labels(label, labels_file) if (label or labels_file) else None
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    client = connect_or_fail(settings)
    setup_logging(log_level)
    cache = DatasetCache(settings.cache_dir, settings.api_url, settings.workspace, settings.dataset)
    scorer = None
    background = None
    if finetune:
        background = BackgroundFinetune(
            cache.root, FinetuneSettings(min_reviews=finetune_min_reviews, every=finetune_every,
                                         time_budget=finetune_time_budget, threads=finetune_threads,
                                         margin=finetune_margin, alpha=finetune_alpha),
            start_jobs=watch, echo=typer.echo)

    def one_round():
        nonlocal scorer
        if embed and scorer is None:
            scorer = embedding_scorer(settings)
        summary = run_refresh(client, settings.dataset, settings.workspace, settings.api_url, cache, labels=labels,
                              embed_scorer=scorer, head_output=head_output, batch_size=batch_size,
                              concurrency=concurrency, min_score_change=min_score_change, finetune=background,
                              head_config=head_config(settings))
        typer.echo(summary.render())
        write_json(summary_json, summary.to_dict())
        return summary

    try:
        if watch:
            found = find_dataset(client, settings.dataset, settings.workspace)
            if found is None:
                raise RefreshError(f"dataset {settings.dataset!r} not found in workspace {settings.workspace!r}")
            with cache.lock("refresh --watch"):  # one watcher (and one staging of fine-tunes) per dataset cache
                run_watch(one_round, lambda: count_reviewed(found), every=every, poll_seconds=poll_seconds,
                          echo=typer.echo, finished=background.poll if background is not None else None)
        else:
            one_round()
    except (RefreshError, CacheBusy) as exc:
        raise fail(str(exc), 2) from None
    except (ArgillaRefused, ArgillaUnavailable) as exc:
        raise fail(str(exc)) from None
    except UpsertFailed as exc:
        raise fail(f"refresh stopped: {exc} (run it again: it updates what is left)") from None
    except ScoringError as exc:
        raise fail(f"--embed failed: {exc}") from None
    finally:
        if scorer is not None:
            scorer.close()
        if background is not None:
            background.stop()
