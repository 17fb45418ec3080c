"""The Label Studio side of the commands: ``python -m annotate labelstudio backend``, and what ``push``, ``refresh``,
``accept``, ``suspects`` and ``export`` do with ``--tool labelstudio`` (:mod:`annotate.loop` on a
:class:`annotate.labelstudio.tool.LabelStudioTool`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from annotate.cli import (
    ApiKey,
    ApiUrl,
    LogLevel,
    cli,
    fail,
    head_config,
    labelstudio_or_fail,
    settings_from_env,
    setup_logging,
    write_json,
)

labelstudio_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                              help="Label Studio: the ML backend that keeps its predictions improving.")
cli.add_typer(labelstudio_app, name="labelstudio")


@labelstudio_app.command()
def backend(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9090,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    connect: Annotated[Optional[list[str]], typer.Option("--connect", help="Connect the backend to this project "
                                                         "(by title; repeatable) through the API, as Settings > "
                                                         "Model does.", show_default=False)] = None,
    debounce: Annotated[float, typer.Option(help="Seconds without a new annotation before a refresh starts.",
                                            min=0.0)] = 5.0,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Local cache (env ANNOTATE_CACHE_DIR).",
                                                      show_default=False)] = None,
    log_level: LogLevel = "info",
) -> None:
    """Serve the ML backend (GET /health, POST /setup, /predict, /webhook) for a Label Studio server.

    /predict answers each task with the loop's current suggestion; annotation events refit the head in the
    background (--debounce seconds after the last one) and write the pending tasks' predictions under a new model
    version, so Label Studio's uncertainty sampling serves the least confident task. Connect it under the project's
    Settings > Model (URL http://HOST:PORT), or with --connect.
    """
    import uvicorn

    from annotate.labelstudio.backend import create_backend
    from annotate.labelstudio.client import LabelStudio, LabelStudioRefused, LabelStudioUnavailable

    settings = settings_from_env(api_url=api_url, api_key=api_key, cache_dir=cache_dir, tool="labelstudio")
    try:
        settings.require("labelstudio_url", "labelstudio_api_key")
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    setup_logging(log_level)
    try:
        client = LabelStudio(settings.labelstudio_url, settings.labelstudio_api_key)
        for title in connect or []:
            project = client.find_project(title)
            if project is None:
                raise fail(f"no Label Studio project called {title!r} at {client.url}", 2)
            url = f"http://{host}:{port}"
            if not any(b.get("url") == url for b in client.ml_backends(project["id"])):
                typer.echo(f"connecting {url} to project {title!r} once the backend answers")
                _connect_later(client, project["id"], url)
    except (LabelStudioRefused, LabelStudioUnavailable) as exc:
        raise fail(str(exc)) from None
    app = create_backend(client, settings.cache_dir, settings=settings, head_config=head_config(settings),
                         debounce=debounce)
    typer.echo(f"ML backend for {client.url} at http://{host}:{port} (cache {settings.cache_dir})")
    uvicorn.run(app, host=host, port=port, log_level=log_level.lower())


def _connect_later(client, project_id: int, url: str) -> None:
    """Register the backend once it listens (Label Studio checks /health when a backend is added)."""
    import threading
    import time

    import httpx

    def connect():
        for _ in range(100):
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    client.add_ml_backend(project_id, url)
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)

    threading.Thread(target=connect, daemon=True).start()


# ---------------------------------------------------------------------------------------------------------------
# The commands' --tool labelstudio paths
# ---------------------------------------------------------------------------------------------------------------
def push(settings, rows, *, labels, multi_label, template, descriptions, method, summary_json) -> None:
    """``push --tool labelstudio``: score (cached), fit, import tasks with predictions into the project."""
    from annotate.cache import DatasetCache
    from annotate.loop import LoopError
    from annotate.loop import push as run_push
    from annotate.tools import record_id
    from pool.scorers import HttpScorer, LocalScorer, ScoringError

    if multi_label:
        raise fail("--tool labelstudio pushes single-label projects (multi-label: not yet)", 2)
    tool = labelstudio_or_fail(settings, labels=labels, create=True, descriptions=descriptions, template=template)
    cache = DatasetCache(settings.cache_dir, settings.labelstudio_url, "labelstudio", settings.dataset)

    def scorer():  # loaded only when some text is not in the cache yet
        if settings.service_url:
            return HttpScorer(settings.service_url, labels, template, method=method,
                              api_key=settings.service_api_key, label_descriptions=descriptions)
        return LocalScorer(labels, template, model=settings.model, engine=settings.engine, method=method,
                           label_descriptions=descriptions)

    try:
        summary = run_push(((record_id(row.text, row.source_id), row.text) for row in rows if row.text), tool,
                           scorer, cache, template=template, head_config=head_config(settings))
    except (ScoringError, LoopError) as exc:
        raise fail(f"push stopped: {exc} (run the same command again to resume)") from None
    typer.echo(summary.render())
    write_json(summary_json, summary.to_dict())


def refresh(settings, *, labels, min_score_change, head_output, summary_json, watch, every, poll_seconds) -> None:
    """``refresh --tool labelstudio`` (``--watch``: again whenever ``every`` more tasks were annotated)."""
    from annotate.cache import DatasetCache
    from annotate.loop import LoopError
    from annotate.loop import refresh as run_refresh
    from annotate.refresh import watch as run_watch

    tool = labelstudio_or_fail(settings, labels=labels)
    cache = DatasetCache(settings.cache_dir, settings.labelstudio_url, "labelstudio", settings.dataset)

    def one_round():
        try:
            summary = run_refresh(tool, cache, head_config=head_config(settings), min_score_change=min_score_change,
                                  head_output=head_output)
        except LoopError as exc:
            raise fail(str(exc), 2) from None
        typer.echo(summary.render())
        write_json(summary_json, summary.to_dict())

    if watch:
        def decided() -> int:
            return sum(r.status is not None for r in tool.records())

        with cache.lock("refresh --watch"):
            run_watch(one_round, decided, every=every, poll_seconds=poll_seconds, echo=typer.echo)
    else:
        one_round()


def accept(settings, *, target, confidence, scope, mode, summary_json) -> None:
    """``accept --tool labelstudio``."""
    from annotate.loop import accept as run_accept

    tool = labelstudio_or_fail(settings)
    summary = run_accept(tool, target=target, confidence=confidence, scope=scope, mode=mode)
    typer.echo(summary.render())
    write_json(summary_json, summary.to_dict())


def suspects(settings, *, dry_run, summary_json) -> None:
    """``suspects --tool labelstudio``."""
    from annotate.cache import DatasetCache
    from annotate.loop import LoopError
    from annotate.loop import suspects as run_suspects
    from annotate.suspects import SuspectsError

    tool = labelstudio_or_fail(settings)
    cache = DatasetCache(settings.cache_dir, settings.labelstudio_url, "labelstudio", settings.dataset)
    try:
        summary = run_suspects(tool, cache, head_config=head_config(settings), dry_run=dry_run)
    except (LoopError, SuspectsError) as exc:
        raise fail(str(exc), 2) from None
    typer.echo(summary.render())
    write_json(summary_json, summary.to_dict())


def export(settings, output, *, fmt, humans_only, include_discarded, summary_json) -> None:
    """``export --tool labelstudio`` (JSON Lines)."""
    from annotate.cache import DatasetCache
    from annotate.loop import export as run_export

    if fmt != "jsonl":
        raise fail(f"--tool labelstudio exports jsonl (not {fmt!r})", 2)
    tool = labelstudio_or_fail(settings)
    cache = DatasetCache(settings.cache_dir, settings.labelstudio_url, "labelstudio", settings.dataset)
    summary = run_export(tool, cache, output, humans_only=humans_only, include_discarded=include_discarded)
    typer.echo(summary.render())
    write_json(summary_json, summary.to_dict())
