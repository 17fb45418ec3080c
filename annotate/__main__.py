"""python -m annotate: push zero-shot suggestions into Argilla, export what people reviewed.

Argilla: --api-url / ARGILLA_API_URL, --api-key / ARGILLA_API_KEY, --workspace / ARGILLA_WORKSPACE.
Scoring: --service-url / ANNOTATE_SERVICE_URL (a running `python -m service`), or in-process when unset.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

cli = typer.Typer(add_completion=False, help=__doc__, no_args_is_help=True, rich_markup_mode=None)
logger = logging.getLogger("annotate")

ApiUrl = Annotated[Optional[str], typer.Option(help="Argilla URL (env ARGILLA_API_URL).", show_default=False)]
ApiKey = Annotated[Optional[str], typer.Option(help="Argilla API key (env ARGILLA_API_KEY).", show_default=False)]
Workspace = Annotated[Optional[str], typer.Option(help="Argilla workspace (env ARGILLA_WORKSPACE; default argilla).",
                                                  show_default=False)]
DatasetName = Annotated[Optional[str], typer.Option("--dataset", help="Argilla dataset name (env ANNOTATE_DATASET).",
                                                    show_default=False)]
LogLevel = Annotated[str, typer.Option(help="Logging level once the input is validated: debug, info, warning.")]


def _fail(message: str, code: int = 1) -> typer.Exit:
    """One line on stderr, then exit with ``code``."""
    typer.echo(f"error: {' '.join(str(message).split())}", err=True)
    return typer.Exit(code)


def _settings(**overrides):
    from pydantic import ValidationError

    from annotate.config import AnnotateSettings

    try:
        settings = AnnotateSettings()
    except ValidationError as exc:
        raise _fail(f"bad environment: {exc.errors()[0]['msg']}", 2) from None
    return settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("argilla.sdk", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def read_labels(label: list[str] | None, labels_file: Path | None) -> list[str]:
    """Candidate labels from repeated ``--label`` options or a file with one label a line (not both).

    Raises:
        ValueError: none given, both given, unreadable file, blank or repeated labels.
    """
    if label and labels_file:
        raise ValueError("give labels either with --label or with --labels-file, not both")
    if labels_file:
        try:
            label = [line.strip() for line in labels_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        except OSError as exc:
            raise ValueError(f"cannot read --labels-file {labels_file}: {exc.strerror}") from None
    label = [x.strip() for x in (label or [])]
    if not label:
        raise ValueError("no candidate labels: pass --label (repeatable) or --labels-file")
    if any(not x for x in label):
        raise ValueError("a candidate label is empty")
    repeated = sorted({x for x in label if label.count(x) > 1})
    if repeated:
        raise ValueError(f"candidate labels must be unique; repeated: {', '.join(map(repr, repeated))}")
    return label


@cli.command()
def push(
    input_path: Annotated[Optional[Path], typer.Argument(metavar="INPUT", help="Unlabeled texts: .txt (one a line), "
                                                         ".csv, .jsonl or .parquet (omit with --from-scores).",
                                                         show_default=False)] = None,
    label: Annotated[Optional[list[str]], typer.Option("--label", "-l", help="A candidate label; repeat for each.",
                                                       show_default=False)] = None,
    labels_file: Annotated[Optional[Path], typer.Option(help="File with one candidate label a line.",
                                                        show_default=False)] = None,
    text_column: Annotated[str, typer.Option(help="Text column of .csv/.jsonl/.parquet input.")] = "text",
    id_column: Annotated[Optional[str], typer.Option(help="Column whose value joins the text in the record id.",
                                                     show_default=False)] = None,
    hypothesis_template: Annotated[str, typer.Option(help="NLI hypothesis, exactly one {} for the label.")]
    = "This text is about {}.",
    multi_label: Annotated[bool, typer.Option("--multi-label", help="Labels are independent; the question becomes "
                                              "a MultiLabelQuestion.")] = False,
    threshold: Annotated[float, typer.Option(help="With --multi-label: suggest labels scoring at least this.",
                                             min=0.0, max=1.0)] = 0.5,
    dataset: DatasetName = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    workspace: Workspace = None,
    service_url: Annotated[Optional[str], typer.Option(help="Zero-shot service URL (env ANNOTATE_SERVICE_URL); "
                                                       "unset: score in-process.", show_default=False)] = None,
    method: Annotated[Optional[str], typer.Option(help="Zero-shot method: auto, nli, embedding or ensemble "
                                                  "(unset: the service's default, auto).",
                                                  show_default=False)]
    = None,
    model: Annotated[Optional[str], typer.Option(help="In-process model (env ANNOTATE_MODEL; default: the "
                                                 "embedded teacher).", show_default=False)] = None,
    engine: Annotated[Optional[str], typer.Option(help="In-process engine (env ANNOTATE_ENGINE; default "
                                                  "onnxruntime).", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option(help="Records scored and upserted together.", min=1, max=500)] = 64,
    limit: Annotated[Optional[int], typer.Option(help="Read at most this many input rows.", min=1,
                                                 show_default=False)] = None,
    summary_json: Annotated[Optional[Path], typer.Option(help="Also write the summary here as JSON.",
                                                         show_default=False)] = None,
    adapt: Annotated[bool, typer.Option("--adapt/--no-adapt", help="Single-label: suggestions from a head fitted on "
                                        "the pool's embeddings (self-training on the zero-shot scores); --no-adapt "
                                        "keeps the plain zero-shot scores. Multi-label always keeps them.")] = True,
    audit_fraction: Annotated[float, typer.Option(help="Share of records marked audit=1 (a random sample, from the "
                                                  "record id) to estimate suggestion accuracy without review-order "
                                                  "bias.", min=0.0, max=1.0)] = 0.05,
    from_scores: Annotated[Optional[Path], typer.Option(help="Push a scored-pool folder written by `python -m annotate "
                                                        "score` (no model runs) instead of INPUT.",
                                                        show_default=False)] = None,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Local cache of scores, embeddings and heads (env "
                                                      "ANNOTATE_CACHE_DIR; default "
                                                      "~/.cache/zeroshot-preannotate/annotate).",
                                                      show_default=False)] = None,
    log_level: LogLevel = "info",
) -> None:
    """Score INPUT with the zero-shot teacher and upsert records with suggestions into an Argilla dataset.

    Creates the dataset on first use. Record ids are content hashes, so running the same command again after an
    interruption, or with more data, adds only what is missing. Every text is also embedded once (vector field
    `embedding`, and the local cache that `refresh` reads). Single-label suggestions come from the adapted head
    (agent `<encoder>:adaptive-head:<revision>`) unless --no-adapt. Prints a summary and the review URL (records
    sorted by suggestion score, lowest first).
    """
    import itertools

    from annotate import readers
    from annotate.client import ArgillaRefused, ArgillaUnavailable, connect, find_dataset
    from annotate.dataset import DatasetMismatch, check_compatible
    from annotate.push import PushFailed
    from annotate.push import push as run_push
    from annotate.scoring import HttpScorer, LocalScorer, ScoringError

    settings = _settings(api_url=api_url, api_key=api_key, workspace=workspace, dataset=dataset,
                         service_url=service_url, model=model, engine=engine, cache_dir=cache_dir)
    adaptive = adapt and not multi_label
    try:
        settings.require("api_url", "api_key", "dataset")
        labels = read_labels(label, labels_file)
        from service.zeroshot import validate_template

        validate_template(hypothesis_template)
        if (input_path is None) == (from_scores is None):
            raise ValueError("give either INPUT or --from-scores DIR (one of them)")
        if from_scores is not None and not adaptive:
            raise ValueError("--from-scores pushes adapted suggestions: drop --no-adapt/--multi-label, or push INPUT")
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    from annotate.cache import DatasetCache
    from annotate.dataset import has_vectors
    from annotate.push import NO_VECTORS
    from annotate.store import PoolStore, StoreError

    # Pre-flight, in the order that writes nothing: input, Argilla and the dataset, the scorer.
    scored = None
    rows = None
    try:
        if from_scores is not None:
            scored = PoolStore(from_scores)
            meta = scored.check(labels)
            if meta.get("hypothesis_template") != hypothesis_template:
                raise StoreError(f"{from_scores} was scored with the template {meta.get('hypothesis_template')!r}, "
                                 f"not {hypothesis_template!r}: pass that --hypothesis-template or score again")
            if bool(meta.get("multi_label", False)) != multi_label:
                raise StoreError(f"{from_scores} was scored {'with' if meta.get('multi_label') else 'without'} "
                                 "--multi-label")
            if not scored.shards():
                raise StoreError(f"{from_scores} holds no part-*.parquet shard: run `python -m annotate score` first")
        else:
            rows = readers.iter_rows(input_path, text_column=text_column, id_column=id_column)
            first = next(rows, None)
            while first is not None and not first.text:
                first = next(rows, None)
            if first is None:
                raise readers.InputError(f"{input_path} has no non-empty text to push")
            rows = itertools.chain([first], rows)
            if limit:
                rows = itertools.islice(rows, limit)
        client = connect(settings.api_url, settings.api_key)
        existing = find_dataset(client, settings.dataset, settings.workspace)
        if existing is not None:
            check_compatible(existing, labels, multi_label)
            if adaptive and not has_vectors(existing):
                raise DatasetMismatch(NO_VECTORS.format(name=settings.dataset))
    except (readers.InputError, DatasetMismatch, StoreError, ArgillaRefused, ArgillaUnavailable) as exc:
        raise _fail(str(exc), 2 if isinstance(exc, (readers.InputError, DatasetMismatch, StoreError)) else 1) from None
    _setup_logging(log_level)
    cache = DatasetCache(settings.cache_dir, settings.api_url, settings.workspace, settings.dataset)
    if scored is not None:
        total = None
        scorer = None
        try:
            summary = run_push(None, client=client, api_url=settings.api_url, dataset_name=settings.dataset,
                               workspace=settings.workspace, labels=labels, multi_label=multi_label,
                               template=hypothesis_template, scorer=None, batch_size=batch_size, cache=cache,
                               adaptive=True, audit_fraction=audit_fraction, from_scores=scored)
        except PushFailed as exc:
            typer.echo(exc.summary.render())
            _write_json(summary_json, exc.summary.to_dict())
            raise _fail(f"push stopped: {exc} (run the same command again to resume)") from None
        except (DatasetMismatch, ArgillaRefused, ArgillaUnavailable) as exc:
            raise _fail(str(exc)) from None
        typer.echo(summary.render())
        _write_json(summary_json, summary.to_dict())
        return
    total = readers.count_rows(input_path)
    total = min(total, limit) if (total and limit) else (total or limit)
    try:
        if settings.service_url:
            scorer = HttpScorer(settings.service_url, labels, hypothesis_template, multi_label, method=method)
        else:
            logger.info("no --service-url: scoring in-process with %s on %s", settings.model, settings.engine)
            scorer = LocalScorer(labels, hypothesis_template, multi_label, model=settings.model,
                                 engine=settings.engine, method=method)
    except ScoringError as exc:
        raise _fail(str(exc)) from None
    try:
        summary = run_push(rows, client=client, api_url=settings.api_url, dataset_name=settings.dataset,
                           workspace=settings.workspace, labels=labels, multi_label=multi_label,
                           template=hypothesis_template, scorer=scorer, batch_size=batch_size, threshold=threshold,
                           total=total, cache=cache, adaptive=adaptive, audit_fraction=audit_fraction)
    except PushFailed as exc:
        typer.echo(exc.summary.render())
        _write_json(summary_json, exc.summary.to_dict())
        raise _fail(f"push stopped: {exc} (run the same command again to resume)") from None
    except (readers.InputError, DatasetMismatch, ArgillaRefused, ArgillaUnavailable) as exc:
        raise _fail(str(exc)) from None
    finally:
        scorer.close()
    typer.echo(summary.render())
    _write_json(summary_json, summary.to_dict())


def _write_json(path: Path | None, payload: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


@cli.command()
def refresh(
    dataset: DatasetName = None,
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
                                                   "beats the head's by more than this (negative: even when it does "
                                                   "not, for trials).", min=-1.0, max=1.0)] = 0.0,
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
    from annotate.client import ArgillaRefused, ArgillaUnavailable, connect, find_dataset
    from annotate.finetune_job import BackgroundFinetune, FinetuneSettings
    from annotate.refresh import RefreshError, count_reviewed
    from annotate.refresh import refresh as run_refresh
    from annotate.refresh import watch as run_watch
    from annotate.scoring import ScoringError
    from annotate.upsert import UpsertFailed

    settings = _settings(api_url=api_url, api_key=api_key, workspace=workspace, dataset=dataset,
                         service_url=service_url, cache_dir=cache_dir)
    try:
        settings.require("api_url", "api_key", "dataset")
        labels = read_labels(label, labels_file) if (label or labels_file) else None
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    try:
        client = connect(settings.api_url, settings.api_key)
    except (ArgillaRefused, ArgillaUnavailable) as exc:
        raise _fail(str(exc)) from None
    _setup_logging(log_level)
    cache = DatasetCache(settings.cache_dir, settings.api_url, settings.workspace, settings.dataset)
    scorer = None
    background = None
    if finetune:
        background = BackgroundFinetune(
            cache.root, FinetuneSettings(min_reviews=finetune_min_reviews, every=finetune_every,
                                         time_budget=finetune_time_budget, threads=finetune_threads,
                                         margin=finetune_margin),
            start_jobs=watch, echo=typer.echo)

    def one_round():
        nonlocal scorer
        if embed and scorer is None:
            scorer = _embedding_scorer(settings)
        summary = run_refresh(client, settings.dataset, settings.workspace, settings.api_url, cache, labels=labels,
                              embed_scorer=scorer, head_output=head_output, batch_size=batch_size,
                              concurrency=concurrency, min_score_change=min_score_change, finetune=background)
        typer.echo(summary.render())
        _write_json(summary_json, summary.to_dict())
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
        raise _fail(str(exc), 2) from None
    except (ArgillaRefused, ArgillaUnavailable) as exc:
        raise _fail(str(exc)) from None
    except UpsertFailed as exc:
        raise _fail(f"refresh stopped: {exc} (run it again: it updates what is left)") from None
    except ScoringError as exc:
        raise _fail(f"--embed failed: {exc}") from None
    finally:
        if scorer is not None:
            scorer.close()
        if background is not None:
            background.stop()


def _zero_shot_scorer(settings, labels: list[str], hypothesis_template: str, method: str | None):
    """The scorer of ``simulate`` and ``adapt``: the service at ``service_url``, else in-process (exit 1 if neither
    can be had)."""
    from annotate.scoring import HttpScorer, LocalScorer, ScoringError

    try:
        if settings.service_url:
            return HttpScorer(settings.service_url, labels, hypothesis_template, method=method)
        return LocalScorer(labels, hypothesis_template, model=settings.model, engine=settings.engine, method=method,
                           batch_size=128)
    except ScoringError as exc:
        raise _fail(str(exc)) from None


def _embedding_scorer(settings):
    """A scorer whose ``embed`` serves ``refresh --embed`` (the service at ``service_url``, else in-process)."""
    from annotate.scoring import HttpScorer, LocalScorer, ScoringError

    try:
        if settings.service_url:
            return HttpScorer(settings.service_url, ["a", "b"], "This text is about {}.")
        return LocalScorer(["a", "b"], "This text is about {}.", model=settings.model, engine=settings.engine,
                           method="embedding")
    except ScoringError as exc:
        raise _fail(str(exc)) from None


@cli.command()
def export(
    output: Annotated[Path, typer.Argument(metavar="OUTPUT", help="Training file to write (a folder with --format "
                                           "hf).", show_default=False)],
    dataset: DatasetName = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    workspace: Workspace = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl, parquet or hf (a Hugging Face datasets folder).")]
    = "jsonl",
    include_discarded: Annotated[bool, typer.Option("--include-discarded", help="Also export discarded records "
                                                    "(status 'discarded', label null).")] = False,
    confusion_png: Annotated[Optional[Path], typer.Option(help="Where to save the confusion matrix PNG; default: "
                                                          "OUTPUT with suffix .confusion.png.", show_default=False)]
    = None,
    summary_json: Annotated[Optional[Path], typer.Option(help="Also write the summary here as JSON.",
                                                         show_default=False)] = None,
    log_level: LogLevel = "info",
) -> None:
    """Export records people reviewed (submitted, optionally discarded) with human labels and teacher scores.

    Prints counts by status, the accuracy of the suggestions on submitted records, and the confusion matrix
    (also saved as a PNG).
    """
    from annotate.client import ArgillaRefused, ArgillaUnavailable, connect
    from annotate.dataset import DatasetMismatch
    from annotate.export import FORMATS
    from annotate.export import export as run_export

    settings = _settings(api_url=api_url, api_key=api_key, workspace=workspace, dataset=dataset)
    try:
        settings.require("api_url", "api_key", "dataset")
        if fmt not in FORMATS:
            raise ValueError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    png = confusion_png or output.with_name(output.name.split(".")[0] + ".confusion.png")
    try:
        client = connect(settings.api_url, settings.api_key)
        _setup_logging(log_level)
        summary = run_export(client, settings.dataset, settings.workspace, output, fmt=fmt,
                             include_discarded=include_discarded, confusion_png=png)
    except (ArgillaRefused, ArgillaUnavailable, DatasetMismatch) as exc:
        raise _fail(str(exc)) from None
    typer.echo(summary.render())
    _write_json(summary_json, summary.to_dict())


@cli.command()
def score(
    inputs: Annotated[list[str], typer.Argument(metavar="INPUT...", help="Unlabeled texts: .jsonl, .parquet, .csv or "
                                                ".txt files, folders of such shards, or URIs Ray Data reads "
                                                "(s3://...).", show_default=False)],
    output: Annotated[Path, typer.Option(help="Scored-pool folder (meta.json + part-*.parquet); rerun to resume.",
                                         show_default=False)],
    label: Annotated[Optional[list[str]], typer.Option("--label", "-l", help="A candidate label; repeat for each.",
                                                       show_default=False)] = None,
    labels_file: Annotated[Optional[Path], typer.Option(help="File with one candidate label a line.",
                                                        show_default=False)] = None,
    text_column: Annotated[str, typer.Option(help="Text column of .csv/.jsonl/.parquet input.")] = "text",
    id_column: Annotated[Optional[str], typer.Option(help="Column whose value joins the text in the record id.",
                                                     show_default=False)] = None,
    hypothesis_template: Annotated[str, typer.Option(help="NLI hypothesis, exactly one {} for the label.")]
    = "This text is about {}.",
    multi_label: Annotated[bool, typer.Option("--multi-label", help="Labels are independent.")] = False,
    method: Annotated[Optional[str], typer.Option(help="Zero-shot method: auto, nli, embedding or ensemble "
                                                  "(unset: auto, as the service).", show_default=False)] = None,
    model: Annotated[Optional[str], typer.Option(help="Model (env ANNOTATE_MODEL; default: the embedded teacher).",
                                                 show_default=False)] = None,
    engine: Annotated[Optional[str], typer.Option(help="Engine (env ANNOTATE_ENGINE; default onnxruntime).",
                                                  show_default=False)] = None,
    concurrency: Annotated[str, typer.Option(help="Actors: N, or MIN,MAX for an autoscaling pool.")] = "1",
    num_cpus: Annotated[int, typer.Option(help="CPUs per actor = its engine's threads.", min=1)] = 1,
    batch_size: Annotated[int, typer.Option(help="Rows per actor call (Ray Data batch).", min=1, max=100_000)] = 256,
    shard_rows: Annotated[int, typer.Option(help="Rows per written Parquet shard.", min=1)] = 4096,
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster: auto or HOST:PORT; unset: start a local "
                                                       "instance.", show_default=False)] = None,
    summary_json: Annotated[Optional[Path], typer.Option(help="Also write the summary here as JSON.",
                                                         show_default=False)] = None,
    log_level: LogLevel = "info",
) -> None:
    """Score INPUT on Ray Data (actors holding the in-process engine) into a scored-pool folder.

    The folder holds record ids (the content hashes push uses), texts, score vectors, suggestions, uncertainty
    and float16 sentence embeddings, so `push --from-scores` and `refresh` need no model. Rerunning over the
    same input scores only the rows whose shards are missing. Ray shows progress; a summary follows.
    """
    settings = _settings(model=model, engine=engine)
    try:
        import ray  # noqa: F401

        from annotate.score import ScoreConfig, ScoreInputError, check_columns, parse_concurrency, resolve_inputs
    except ImportError as exc:  # ray is an extra
        raise _fail(f"score needs Ray: pip install 'zeroshot-preannotate[scale]' ({exc})") from None
    try:
        labels = read_labels(label, labels_file)
        from service.zeroshot import validate_template

        validate_template(hypothesis_template)
        if method not in (None, "auto", "nli", "embedding", "ensemble"):
            raise ValueError(f"--method {method!r} is not one of auto, nli, embedding, ensemble")
        if settings.engine not in ("auto", "onnxruntime", "deepsparse", "torch"):
            raise ValueError(f"--engine {settings.engine!r} is not one of auto, onnxruntime, deepsparse, torch")
        pool = parse_concurrency(concurrency)
        check_columns(*resolve_inputs(inputs), text_column, id_column)
    except (ValueError, ScoreInputError) as exc:
        raise _fail(str(exc), 2) from None
    from annotate.score import score as run_score

    _setup_logging(log_level)
    config = ScoreConfig(labels=tuple(labels), hypothesis_template=hypothesis_template, multi_label=multi_label,
                         method=None if method == "auto" else method, model=settings.model, engine=settings.engine,
                         batch_size=batch_size, num_cpus=num_cpus, text_column=text_column, id_column=id_column)
    try:
        summary = run_score(inputs, output, config, concurrency=pool, ray_address=ray_address,
                            shard_rows=shard_rows)
    except ScoreInputError as exc:
        raise _fail(str(exc), 2) from None
    except Exception as exc:  # a failed Ray job: Ray's error, last line (the cause), is the message
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise _fail(f"score stopped: {lines[-1] if lines else type(exc).__name__} (shards written so far are kept; "
                    "run the same command again to resume)") from None
    typer.echo(summary.render())
    _write_json(summary_json, summary.to_dict())


@cli.command()
def simulate(
    pool_path: Annotated[Path, typer.Argument(metavar="POOL", help="Labelled pool: .jsonl, .csv or .parquet; its gold "
                                              "labels stand in for reviewers.", show_default=False)],
    label: Annotated[Optional[list[str]], typer.Option("--label", "-l", help="A candidate label; repeat for each.",
                                                       show_default=False)] = None,
    labels_file: Annotated[Optional[Path], typer.Option(help="File with one candidate label a line.",
                                                        show_default=False)] = None,
    text_column: Annotated[str, typer.Option(help="Text column of POOL.")] = "text",
    gold_column: Annotated[str, typer.Option(help="Gold label column of POOL (and of --eval).")] = "label",
    label_map: Annotated[Optional[str], typer.Option(help="JSON object mapping gold values to candidate labels, e.g. "
                                                     "'{\"Sci/Tech\": \"science and technology\"}'.",
                                                     show_default=False)] = None,
    hypothesis_template: Annotated[str, typer.Option(help="Hypothesis, exactly one {} for the label.")]
    = "This text is about {}.",
    eval_path: Annotated[Optional[Path], typer.Option("--eval", help="Held-out labelled file to measure on; unset: "
                                                      "the pending pool records.", show_default=False)] = None,
    eval_text_field: Annotated[Optional[list[str]], typer.Option(help="Text field(s) of --eval, joined by a space "
                                                                 "(default: --text-column).", show_default=False)]
    = None,
    budgets: Annotated[str, typer.Option(help="Comma-separated review counts to measure at (0 = no review).")]
    = "0,50,100,300,1000",
    round_size: Annotated[int, typer.Option(help="Reviews between two refits.", min=1)] = 25,
    strategy: Annotated[str, typer.Option(help="Review order: least-confidence, margin or random; comma-separated "
                                          "for several runs side by side.")] = "least-confidence",
    seed: Annotated[int, typer.Option(help="Seeds the random order and the head's folds.")] = 0,
    report_json: Annotated[Optional[Path], typer.Option(help="Write the report here (a PNG learning curve beside it).",
                                                        show_default=False)] = None,
    service_url: Annotated[Optional[str], typer.Option(help="Zero-shot service URL (env ANNOTATE_SERVICE_URL); unset: "
                                                       "in-process.", show_default=False)] = None,
    method: Annotated[str, typer.Option(help="Zero-shot method of the teacher scores.")] = "embedding",
    cache_dir: Annotated[Optional[Path], typer.Option(help="Where scored texts are kept between runs (default "
                                                      "~/.cache/zeroshot-preannotate/annotate/simulate).",
                                                      show_default=False)] = None,
    log_level: LogLevel = "info",
) -> None:
    """Simulate a review with gold labels as reviewers: how accurate the suggestions get after N reviews.

    Scores and embeds POOL (and --eval) once (cached), then at each budget reviews records in --strategy order in
    rounds of --round-size, refits the adapted head after each round, and reports accuracy and macro-F1 next to
    the plain zero-shot scores and to a classifier trained on the reviews alone.
    """
    from annotate import readers
    from annotate.scoring import ScoringError
    from annotate.simulate import LabelledSplit, gold_indices, plot_curve, read_labelled, scored_split
    from annotate.simulate import simulate as run_simulate
    from annotate.strategies import get_strategy

    settings = _settings(service_url=service_url)
    try:
        labels = read_labels(label, labels_file)
        from service.zeroshot import validate_template

        validate_template(hypothesis_template)
        mapping = json.loads(label_map) if label_map else None
        if mapping is not None and (not isinstance(mapping, dict)
                                    or not all(isinstance(v, str) for v in mapping.values())):
            raise ValueError("--label-map must be a JSON object of strings")
        strategies = [get_strategy(name.strip()) for name in strategy.split(",") if name.strip()]
        budget_list = sorted({int(b) for b in budgets.split(",") if b.strip()})
        if not budget_list or budget_list[0] < 0:
            raise ValueError(f"--budgets {budgets!r}: give non-negative integers, e.g. 0,50,100,300,1000")
        pool_texts, pool_gold = read_labelled(pool_path, [text_column], gold_column)
        pool_y = gold_indices(pool_gold, labels, mapping, pool_path)
        if budget_list[-1] > len(pool_texts):
            raise ValueError(f"--budgets goes up to {budget_list[-1]} but {pool_path} has {len(pool_texts)} records")
        if eval_path is not None:
            eval_texts, eval_gold = read_labelled(eval_path, eval_text_field or [text_column], gold_column)
            eval_y = gold_indices(eval_gold, labels, mapping, eval_path)
    except json.JSONDecodeError as exc:
        raise _fail(f"--label-map is not valid JSON: {exc.msg}", 2) from None
    except (ValueError, readers.InputError) as exc:
        raise _fail(str(exc), 2) from None
    _setup_logging(log_level)
    scorer = _zero_shot_scorer(settings, labels, hypothesis_template, method)
    root = cache_dir or Path.home() / ".cache" / "zeroshot-preannotate" / "annotate" / "simulate"
    key = {"labels": labels, "hypothesis_template": hypothesis_template, "method": method, "model": scorer.model_id}
    try:
        pool = LabelledSplit(*scored_split(pool_texts, scorer, root, key), pool_y)
        evaluation = LabelledSplit(*scored_split(eval_texts, scorer, root, key), eval_y) if eval_path else None
    except ScoringError as exc:
        raise _fail(str(exc)) from None
    finally:
        scorer.close()
    reports = []
    for chosen in strategies:
        report = run_simulate(pool, labels, budget_list, strategy=chosen, round_size=round_size,
                              evaluation=evaluation, seed=seed)
        report.update({"pool": str(pool_path), "eval": str(eval_path) if eval_path else None,
                       "hypothesis_template": hypothesis_template, "method": method, "seed": seed})
        reports.append(report)
        typer.echo(_render_simulation(report))
    if report_json is not None:
        payload = reports[0] if len(reports) == 1 else {**reports[0], "runs": reports}
        _write_json(report_json, payload)
        png = report_json.with_suffix(".png")
        plot_curve(reports, png, title=f"{pool_path.parent.name}/{pool_path.name}: suggestion accuracy as reviews arrive")
        typer.echo(f"report: {report_json}; learning curve: {png}")


def _knob(entry: dict) -> str:
    """What the cross-validation chose, for one simulate row."""
    if entry.get("correction_c"):
        return f" (correction C {entry['correction_c']:g})"
    if entry["mode"] == "reviews+pseudo-labels" and entry.get("reviewed"):
        return f" (pseudo-label weight {entry['pseudo_weight']:g})"
    return ""


def _render_simulation(report: dict) -> str:
    zero = report["zero_shot"]
    lines = [f"strategy {report['strategy']}, rounds of {report['round_size']}, measured on {report['evaluated_on']} "
             f"({report['eval_size']})",
             f"zero-shot: accuracy {zero['eval_accuracy']:.4f}, macro-F1 {zero['eval_macro_f1']:.4f}",
             f"{'reviewed':>8}  {'accuracy':>8}  {'macro-F1':>8}  {'pending':>8}  {'reviews only':>12}  mode"]
    for e in report["curve"]:
        only = f"{e['reviews_only_eval_accuracy']:.4f}" if e["reviews_only_eval_accuracy"] is not None else "-"
        pending = f"{e['pending_accuracy']:.4f}" if e["pending_accuracy"] is not None else "-"
        lines.append(f"{e['reviewed']:>8}  {e['eval_accuracy']:>8.4f}  {e['eval_macro_f1']:>8.4f}  {pending:>8}  "
                     f"{only:>12}  {e['mode']}{_knob(e)}, refit {e['refit_seconds']:.2f} s")
    return "\n".join(lines)



@cli.command("adapt")
def adapt_command(
    pool_path: Annotated[Path, typer.Argument(metavar="POOL", help="Unlabeled texts: .txt (one a line), .csv, .jsonl "
                                              "or .parquet.", show_default=False)],
    label: Annotated[Optional[list[str]], typer.Option("--label", "-l", help="A candidate label; repeat for each.",
                                                       show_default=False)] = None,
    labels_file: Annotated[Optional[Path], typer.Option(help="File with one candidate label a line.",
                                                        show_default=False)] = None,
    text_column: Annotated[str, typer.Option(help="Text column of POOL (ignored for .txt).")] = "text",
    hypothesis_template: Annotated[str, typer.Option(help="Hypothesis, exactly one {} for the label.")]
    = "This text is about {}.",
    output: Annotated[Path, typer.Option("--output", "-o", help="Head directory to write (head.json, weights.npz).",
                                         show_default=False)] = ...,
    service_url: Annotated[Optional[str], typer.Option(help="Zero-shot service URL (env ANNOTATE_SERVICE_URL); unset: "
                                                       "in-process.", show_default=False)] = None,
    method: Annotated[str, typer.Option(help="Zero-shot method of the teacher scores.")] = "embedding",
    cache_dir: Annotated[Optional[Path], typer.Option(help="Where scored pools are kept between runs (default "
                                                      "~/.cache/zeroshot-preannotate/annotate/simulate, shared "
                                                      "with simulate).", show_default=False)] = None,
    log_level: LogLevel = "info",
) -> None:
    """Fit the pool-adapted head on POOL with no review (no Argilla) and save it as a head directory.

    The head serves at POST /classify (python -m service --classifier NAME=DIR) and teaches students
    (train/finetune.py --teacher-head DIR). Exit 1 when the guard keeps the zero-shot scores (no head).
    """
    from annotate import readers
    from annotate.adapt_cmd import KeptZeroShot, adapt_pool
    from annotate.adaptive import AdaptError
    from annotate.scoring import ScoringError

    settings = _settings(service_url=service_url)
    try:
        labels = read_labels(label, labels_file)
        if len(labels) < 2:
            raise ValueError("the adapted head needs at least two candidate labels")
        from service.zeroshot import validate_template

        validate_template(hypothesis_template)
        texts = [row.text for row in readers.iter_rows(pool_path, text_column) if row.text]
        if not texts:
            raise ValueError(f"{pool_path} holds no texts in column {text_column!r}")
    except (ValueError, readers.InputError) as exc:
        raise _fail(str(exc), 2) from None
    _setup_logging(log_level)
    scorer = _zero_shot_scorer(settings, labels, hypothesis_template, method)
    root = cache_dir or Path.home() / ".cache" / "zeroshot-preannotate" / "annotate" / "simulate"
    try:
        result = adapt_pool(texts, labels, hypothesis_template, scorer, output, root, method=method,
                            meta={"pool": str(pool_path)})
    except KeptZeroShot as exc:
        raise _fail(f"no head written: {exc}; the zero-shot scores stay the better suggestions for this pool") from None
    except (ScoringError, AdaptError) as exc:
        raise _fail(str(exc)) from None
    finally:
        scorer.close()
    report = result.adapted.report
    typer.echo(f"head {report.revision} ({report.mode}): {report.pseudo_labels} pseudo-labels of {result.pool_size} "
               f"texts, changed {100 * (report.changed_share or 0):.1f}% of the zero-shot labels, temperature "
               f"{report.temperature:.3f}, prior {report.prior}; written to {result.directory}")


if __name__ == "__main__":
    sys.exit(cli())
