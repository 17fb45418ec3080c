"""The ``python -m annotate`` command line: the Typer app, the options every command shares, and their helpers.

Each command lives in its own module of :mod:`annotate.commands` and registers itself on :data:`cli`; this module
defines once what they share: the Argilla connection options, the dataset name, the logging level, the one-line
error exit, settings from the environment, and the scorers.

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

HELP = """Push zero-shot suggestions into Argilla or Label Studio, keep them improving as people review, export
what they curated.

Argilla: --api-url / ARGILLA_API_URL, --api-key / ARGILLA_API_KEY, --workspace / ARGILLA_WORKSPACE.
Label Studio (--tool labelstudio / ANNOTATE_TOOL): --api-url / LABEL_STUDIO_URL, --api-key / LABEL_STUDIO_API_KEY.
Scoring: --service-url / ANNOTATE_SERVICE_URL (a running `python -m service`), or in-process when unset.
"""

cli = typer.Typer(add_completion=False, help=HELP, no_args_is_help=True, rich_markup_mode=None)
logger = logging.getLogger("annotate")
ApiUrl = Annotated[Optional[str], typer.Option(help="Argilla URL (env ARGILLA_API_URL).", show_default=False)]
ApiKey = Annotated[Optional[str], typer.Option(help="Argilla API key (env ARGILLA_API_KEY).", show_default=False)]
Workspace = Annotated[Optional[str], typer.Option(help="Argilla workspace (env ARGILLA_WORKSPACE; default argilla).",
                                                  show_default=False)]
DatasetName = Annotated[Optional[str], typer.Option("--dataset", help="Argilla dataset name (env ANNOTATE_DATASET).",
                                                    show_default=False)]
LogLevel = Annotated[str, typer.Option(help="Logging level once the input is validated: debug, info, warning.")]
ToolOption = Annotated[Optional[str], typer.Option(
    "--tool", help="Annotation tool: argilla or labelstudio (env ANNOTATE_TOOL; default argilla).", show_default=False)]
BiasCorrectionOption = Annotated[Optional[str], typer.Option(
    help="Label-bias correction of the zero-shot scores over the pool: floor, batch or none (env "
    "ANNOTATE_BIAS_CORRECTION; default floor).", show_default=False)]
LabelDescription = Annotated[Optional[list[str]], typer.Option(
    "--label-description", metavar="LABEL=TEXT", help="LABEL=TEXT: a sentence describing a label (repeatable, several per label), used as "
    "one more hypothesis of that label and shown in the annotation question.", show_default=False)]
LabelDescriptionsFile = Annotated[Optional[Path], typer.Option(
    metavar="FILE.json", help="JSON file of label descriptions, {\"label\": [\"sentence\", ...]} (instead of --label-description).",
    show_default=False)]




def fail(message: str, code: int = 1) -> typer.Exit:
    """One line on stderr, then exit with ``code``."""
    typer.echo(f"error: {' '.join(str(message).split())}", err=True)
    return typer.Exit(code)


def connect_or_fail(settings):
    """The Argilla client of ``settings`` (``api_url``, ``api_key``); an unreachable or refusing server exits 1 with
    one line (:func:`fail`)."""
    from annotate.client import ArgillaRefused, ArgillaUnavailable, connect

    try:
        return connect(settings.api_url, settings.api_key)
    except (ArgillaRefused, ArgillaUnavailable) as exc:
        raise fail(str(exc)) from None


def settings_from_env(**overrides):
    from pydantic import ValidationError

    from annotate.config import AnnotateSettings

    try:
        settings = AnnotateSettings()
    except ValidationError as exc:
        raise fail(f"bad environment: {exc.errors()[0]['msg']}", 2) from None
    correction = overrides.get("bias_correction")
    if correction is not None and correction not in ("floor", "batch", "none"):
        raise fail(f"--bias-correction {correction!r}: give floor, batch or none", 2)
    tool = overrides.get("tool")
    if tool is not None and tool not in ("argilla", "labelstudio"):
        raise fail(f"--tool {tool!r}: give argilla or labelstudio", 2)
    if (tool or settings.tool) == "labelstudio":  # --api-url / --api-key name the Label Studio server then
        for option, field in (("api_url", "labelstudio_url"), ("api_key", "labelstudio_api_key")):
            if overrides.get(option) is not None:
                overrides[field] = overrides.pop(option)
    return settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})


def labelstudio_or_fail(settings, *, labels=None, multi_label: bool = False, create: bool = False,
                        descriptions=None, template: str | None = None):
    """The Label Studio project named by ``settings.dataset`` as the loop's tool
    (:func:`annotate.labelstudio.tool.open_project`); exit 2 with one line for a missing setting, a missing project
    or labels that differ, 1 when the server is unreachable or refuses the token."""
    from annotate.labelstudio.client import LabelStudio, LabelStudioRefused, LabelStudioUnavailable
    from annotate.labelstudio.config import ConfigError
    from annotate.labelstudio.tool import open_project

    try:
        settings.require("labelstudio_url", "labelstudio_api_key", "dataset")
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    try:
        client = LabelStudio(settings.labelstudio_url, settings.labelstudio_api_key)
    except (LabelStudioRefused, LabelStudioUnavailable) as exc:
        raise fail(str(exc)) from None
    try:
        return open_project(client, settings.dataset, labels=labels, multi_label=multi_label, create=create,
                            descriptions=descriptions, template=template)
    except (LookupError, ValueError, ConfigError) as exc:
        raise fail(str(exc), 2) from None
    except (LabelStudioRefused, LabelStudioUnavailable) as exc:
        raise fail(str(exc)) from None


def head_config(settings, **overrides):
    """The adapted head's :class:`annotate.adaptive.HeadConfig` with the settings' bias correction
    (``ANNOTATE_BIAS_CORRECTION``) and ``overrides``."""
    from annotate.adaptive import HeadConfig

    return HeadConfig(**{"bias_correction": settings.bias_correction, **overrides})


def setup_logging(level: str) -> None:
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


def read_descriptions(values: list[str] | None, path: Path | None, labels: list[str]) -> dict[str, list[str]] | None:
    """Label descriptions from repeated ``--label-description LABEL=TEXT`` options or a JSON file (not both), checked
    against the candidate ``labels`` (:func:`service.schemas.check_descriptions`); ``None`` when there are none.

    Raises:
        ValueError: both given, an option without ``=``, an unreadable or malformed file, a description of an unknown
            label, or a blank or over-long description.
    """
    from service.schemas import check_descriptions

    if values and path:
        raise ValueError("give label descriptions either with --label-description or with --label-descriptions-file, "
                         "not both")
    described: dict[str, list[str]] = {}
    if path is not None:
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ValueError(f"cannot read --label-descriptions-file {path}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"--label-descriptions-file {path} is not valid JSON: {exc.msg}") from None
        if not isinstance(loaded, dict) or not all(
                isinstance(v, list) and all(isinstance(t, str) for t in v) for v in loaded.values()):
            raise ValueError(f"--label-descriptions-file {path} must hold an object of string lists, "
                             '{"label": ["sentence", ...]}')
        described = {str(k): list(v) for k, v in loaded.items()}
    for value in values or []:
        label, sep, text = value.partition("=")
        if not sep:
            raise ValueError(f"--label-description {value!r}: write LABEL=TEXT, e.g. "
                             "'positive=The reviewer enjoyed it.'")
        described.setdefault(label.strip(), []).append(text.strip())
    return check_descriptions(described, labels)


def write_json(path: Path | None, payload: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def zero_shot_scorer(settings, labels: list[str], hypothesis_template: str, method: str | None,
                     multi_label: bool = False, label_descriptions: dict[str, list[str]] | None = None):
    """The scorer of ``simulate`` and ``adapt``: the service at ``service_url``, else in-process (exit 1 if neither
    can be had). ``multi_label``: each label scored on its own (NLI: a sigmoid per label, entailment against
    contradiction) instead of one distribution over the labels."""
    from pool.scorers import HttpScorer, LocalScorer, ScoringError

    try:
        if settings.service_url:
            return HttpScorer(settings.service_url, labels, hypothesis_template, multi_label, method=method,
                              api_key=settings.service_api_key, label_descriptions=label_descriptions)
        return LocalScorer(labels, hypothesis_template, multi_label, model=settings.model, engine=settings.engine,
                           method=method, batch_size=128, label_descriptions=label_descriptions)
    except ScoringError as exc:
        raise fail(str(exc)) from None


def embedding_scorer(settings):
    """A scorer whose ``embed`` serves ``refresh --embed`` (the service at ``service_url``, else in-process)."""
    from pool.scorers import HttpScorer, LocalScorer, ScoringError

    try:
        if settings.service_url:
            return HttpScorer(settings.service_url, ["a", "b"], "This text is about {}.",
                              api_key=settings.service_api_key)
        return LocalScorer(["a", "b"], "This text is about {}.", model=settings.model, engine=settings.engine,
                           method="embedding")
    except ScoringError as exc:
        raise fail(str(exc)) from None
