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
    input_path: Annotated[Path, typer.Argument(metavar="INPUT", help="Unlabeled texts: .txt (one a line), .csv, "
                                               ".jsonl or .parquet.", show_default=False)],
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
    log_level: LogLevel = "info",
) -> None:
    """Score INPUT with the zero-shot teacher and upsert records with suggestions into an Argilla dataset.

    Creates the dataset on first use. Record ids are content hashes, so running the same command again after an
    interruption, or with more data, adds only what is missing. Prints a summary and the review URL (records
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
                         service_url=service_url, model=model, engine=engine)
    try:
        settings.require("api_url", "api_key", "dataset")
        labels = read_labels(label, labels_file)
        from service.zeroshot import validate_template

        validate_template(hypothesis_template)
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    # Pre-flight, in the order that writes nothing: input, Argilla and the dataset, the scorer.
    try:
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
    except (readers.InputError, DatasetMismatch, ArgillaRefused, ArgillaUnavailable) as exc:
        raise _fail(str(exc), 2 if isinstance(exc, (readers.InputError, DatasetMismatch)) else 1) from None
    _setup_logging(log_level)
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
                           total=total)
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


if __name__ == "__main__":
    sys.exit(cli())
