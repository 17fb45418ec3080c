"""``python -m annotate push``: its options and what it does with them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from annotate.cli import (
    ApiKey,
    ApiUrl,
    DatasetName,
    LabelDescription,
    LabelDescriptionsFile,
    LogLevel,
    ToolOption,
    Workspace,
    cli,
    fail,
    head_config,
    logger,
    read_descriptions,
    read_labels,
    settings_from_env,
    setup_logging,
    write_json,
)


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
    strip_whitespace: Annotated[bool, typer.Option("--strip-whitespace", help="Remove leading and trailing "
                                                   "whitespace from every text (default: texts are stored exactly "
                                                   "as given; record ids follow the stored text, so keep one choice "
                                                   "per dataset).")] = False,
    id_column: Annotated[Optional[str], typer.Option(help="Column whose value joins the text in the record id.",
                                                     show_default=False)] = None,
    hypothesis_template: Annotated[str, typer.Option(help="NLI hypothesis, exactly one {} for the label.")]
    = "This text is about {}.",
    label_description: LabelDescription = None,
    label_descriptions_file: LabelDescriptionsFile = None,
    multi_label: Annotated[bool, typer.Option("--multi-label", help="Labels are independent; the question becomes "
                                              "a MultiLabelQuestion.")] = False,
    threshold: Annotated[float, typer.Option(help="With --multi-label: suggest labels scoring at least this.",
                                             min=0.0, max=1.0)] = 0.5,
    dataset: DatasetName = None,
    tool: ToolOption = None,
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
    fit_rows: Annotated[Optional[int], typer.Option(help="--adapt: fit the head on the first N new records and upsert "
                                                    "while the rest is scored (a refit on the whole pool then rewrites "
                                                    "the suggestions it changes: few on a shuffled input, most on one "
                                                    "grouped by class). Default: the whole pool first.", min=2,
                                                    show_default=False)] = None,
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

    from annotate.client import ArgillaRefused, ArgillaUnavailable, connect, find_dataset
    from annotate.dataset import DatasetMismatch, check_compatible
    from annotate.push import PushFailed
    from annotate.push import push as run_push
    from pool import readers
    from pool.scorers import HttpScorer, LocalScorer, ScoringError

    settings = settings_from_env(api_url=api_url, api_key=api_key, workspace=workspace, dataset=dataset,
                         service_url=service_url, model=model, engine=engine, cache_dir=cache_dir, tool=tool)
    adaptive = adapt and not multi_label
    if settings.tool == "labelstudio":
        return _push_labelstudio(settings, input_path, label, labels_file, text_column, id_column, strip_whitespace,
                                 limit, hypothesis_template, label_description, label_descriptions_file, multi_label,
                                 method, summary_json, log_level)
    try:
        settings.require("api_url", "api_key", "dataset")
        labels = read_labels(label, labels_file)
        descriptions = read_descriptions(label_description, label_descriptions_file, labels)
        from service.zeroshot import validate_template

        validate_template(hypothesis_template)
        if (input_path is None) == (from_scores is None):
            raise ValueError("give either INPUT or --from-scores DIR (one of them)")
        if from_scores is not None and not adaptive:
            raise ValueError("--from-scores pushes adapted suggestions: drop --no-adapt/--multi-label, or push INPUT")
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    from annotate.cache import DatasetCache
    from annotate.dataset import has_vectors
    from annotate.push import NO_VECTORS
    from pool.store import PoolStore, StoreError

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
            rows = readers.iter_rows(input_path, text_column=text_column, id_column=id_column,
                                     strip=strip_whitespace)
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
        raise fail(str(exc), 2 if isinstance(exc, (readers.InputError, DatasetMismatch, StoreError)) else 1) from None
    setup_logging(log_level)
    cache = DatasetCache(settings.cache_dir, settings.api_url, settings.workspace, settings.dataset)
    if scored is not None:
        total = None
        scorer = None
        try:
            summary = run_push(None, client=client, api_url=settings.api_url, dataset_name=settings.dataset,
                               workspace=settings.workspace, labels=labels, multi_label=multi_label,
                               template=hypothesis_template, scorer=None, batch_size=batch_size, cache=cache,
                               adaptive=True, audit_fraction=audit_fraction, from_scores=scored,
                               head_config=head_config(settings),
                               label_descriptions=meta.get("label_descriptions"))
        except PushFailed as exc:
            typer.echo(exc.summary.render())
            write_json(summary_json, exc.summary.to_dict())
            raise fail(f"push stopped: {exc} (run the same command again to resume)") from None
        except (DatasetMismatch, ArgillaRefused, ArgillaUnavailable) as exc:
            raise fail(str(exc)) from None
        typer.echo(summary.render())
        write_json(summary_json, summary.to_dict())
        return
    total = readers.count_rows(input_path)
    total = min(total, limit) if (total and limit) else (total or limit)
    try:
        if settings.service_url:
            scorer = HttpScorer(settings.service_url, labels, hypothesis_template, multi_label, method=method,
                                api_key=settings.service_api_key, label_descriptions=descriptions)
        else:
            logger.info("no --service-url: scoring in-process with %s on %s", settings.model, settings.engine)
            scorer = LocalScorer(labels, hypothesis_template, multi_label, model=settings.model,
                                 engine=settings.engine, method=method, label_descriptions=descriptions)
    except ScoringError as exc:
        raise fail(str(exc)) from None
    try:
        summary = run_push(rows, client=client, api_url=settings.api_url, dataset_name=settings.dataset,
                           workspace=settings.workspace, labels=labels, multi_label=multi_label,
                           template=hypothesis_template, scorer=scorer, batch_size=batch_size, threshold=threshold,
                           total=total, cache=cache, adaptive=adaptive, audit_fraction=audit_fraction,
                           fit_rows=fit_rows, label_descriptions=descriptions, head_config=head_config(settings))
    except PushFailed as exc:
        typer.echo(exc.summary.render())
        write_json(summary_json, exc.summary.to_dict())
        raise fail(f"push stopped: {exc} (run the same command again to resume)") from None
    except (readers.InputError, DatasetMismatch, ArgillaRefused, ArgillaUnavailable) as exc:
        raise fail(str(exc)) from None
    finally:
        scorer.close()
    typer.echo(summary.render())
    write_json(summary_json, summary.to_dict())


def _push_labelstudio(settings, input_path, label, labels_file, text_column, id_column, strip_whitespace, limit,
                      hypothesis_template, label_description, label_descriptions_file, multi_label, method,
                      summary_json, log_level) -> None:
    import itertools

    from annotate.adaptive import preload
    from annotate.commands import labelstudio
    from pool import readers
    from service.zeroshot import validate_template

    try:
        labels = read_labels(label, labels_file)
        descriptions = read_descriptions(label_description, label_descriptions_file, labels)
        validate_template(hypothesis_template)
        if input_path is None:
            raise ValueError("give INPUT (--from-scores pushes to Argilla only)")
        rows = readers.iter_rows(input_path, text_column=text_column, id_column=id_column, strip=strip_whitespace)
        if limit:
            rows = itertools.islice(rows, limit)
    except (ValueError, readers.InputError) as exc:
        raise fail(str(exc), 2) from None
    setup_logging(log_level)
    preload()  # the head's library loads while the project, the input and the cache are read
    try:
        labelstudio.push(settings, rows, labels=labels, multi_label=multi_label, template=hypothesis_template,
                         descriptions=descriptions, method=method, summary_json=summary_json)
    except readers.InputError as exc:
        raise fail(str(exc), 2) from None
