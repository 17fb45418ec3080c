"""``python -m annotate adapt``: its options and what it does with them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from annotate.cli import (
    BiasCorrectionOption,
    LabelDescription,
    LabelDescriptionsFile,
    LogLevel,
    cli,
    fail,
    head_config,
    read_descriptions,
    read_labels,
    settings_from_env,
    setup_logging,
    zero_shot_scorer,
)


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
    label_description: LabelDescription = None,
    label_descriptions_file: LabelDescriptionsFile = None,
    bias_correction: BiasCorrectionOption = None,
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
    from annotate.adapt_pool import KeptZeroShot, adapt_pool
    from annotate.adaptive import AdaptError
    from pool import readers
    from pool.scorers import ScoringError

    settings = settings_from_env(service_url=service_url, bias_correction=bias_correction)
    try:
        labels = read_labels(label, labels_file)
        if len(labels) < 2:
            raise ValueError("the adapted head needs at least two candidate labels")
        descriptions = read_descriptions(label_description, label_descriptions_file, labels)
        from service.zeroshot import validate_template

        validate_template(hypothesis_template)
        texts = [row.text for row in readers.iter_rows(pool_path, text_column) if row.text]
        if not texts:
            raise ValueError(f"{pool_path} holds no texts in column {text_column!r}")
    except (ValueError, readers.InputError) as exc:
        raise fail(str(exc), 2) from None
    setup_logging(log_level)
    scorer = zero_shot_scorer(settings, labels, hypothesis_template, method, label_descriptions=descriptions)
    root = cache_dir or Path.home() / ".cache" / "zeroshot-preannotate" / "annotate" / "simulate"
    try:
        result = adapt_pool(texts, labels, hypothesis_template, scorer, output, root, method=method,
                            meta={"pool": str(pool_path)}, config=head_config(settings))
    except KeptZeroShot as exc:
        raise fail(f"no head written: {exc}; the zero-shot scores stay the better suggestions for this pool") from None
    except (ScoringError, AdaptError) as exc:
        raise fail(str(exc)) from None
    finally:
        scorer.close()
    report = result.adapted.report
    typer.echo(f"head {report.revision} ({report.mode}): {report.pseudo_labels} pseudo-labels of {result.pool_size} "
               f"texts, changed {100 * (report.changed_share or 0):.1f}% of the zero-shot labels, temperature "
               f"{report.temperature:.3f}, prior {report.prior}; written to {result.directory}")
