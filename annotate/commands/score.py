"""``python -m annotate score``: its options and what it does with them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from annotate.cli import LogLevel, cli, fail, read_labels, settings_from_env, setup_logging, write_json


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
    settings = settings_from_env(model=model, engine=engine)
    try:
        import ray  # noqa: F401

        from annotate.ray_scoring import ScoreConfig, ScoreInputError, check_columns, parse_concurrency, resolve_inputs
    except ImportError as exc:  # ray is an extra
        raise fail(f"score needs Ray: pip install 'zeroshot-preannotate[scale]' ({exc})") from None
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
        raise fail(str(exc), 2) from None
    from annotate.ray_scoring import score as run_score

    setup_logging(log_level)
    config = ScoreConfig(labels=tuple(labels), hypothesis_template=hypothesis_template, multi_label=multi_label,
                         method=None if method == "auto" else method, model=settings.model, engine=settings.engine,
                         batch_size=batch_size, num_cpus=num_cpus, text_column=text_column, id_column=id_column)
    try:
        summary = run_score(inputs, output, config, concurrency=pool, ray_address=ray_address,
                            shard_rows=shard_rows)
    except ScoreInputError as exc:
        raise fail(str(exc), 2) from None
    except Exception as exc:  # a failed Ray job: Ray's error, last line (the cause), is the message
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise fail(f"score stopped: {lines[-1] if lines else type(exc).__name__} (shards written so far are kept; "
                    "run the same command again to resume)") from None
    typer.echo(summary.render())
    write_json(summary_json, summary.to_dict())
