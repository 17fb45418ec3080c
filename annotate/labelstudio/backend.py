"""The Label Studio ML backend that learns: what a Label Studio user connects under Settings > Model.

Label Studio's ML backend protocol (label-studio-ml-backend; Label Studio 1.23):

* ``GET /health`` -> ``{"status": "UP"}``; ``POST /setup`` (project, label config) -> ``{"model_version"}``;
* ``POST /predict`` ``{"tasks": [...], "project": "<id>.<ts>", "label_config"}`` -> ``{"results": [{"result",
  "score", "model_version"}, ...]}``, one per task, in order: the loop's current suggestion of each task (the adapted
  head's, or the bias-corrected zero-shot scores before any review); a task the loop has not scored is scored now
  (zero-shot teacher and sentence encoder, in-process or through ``ANNOTATE_SERVICE_URL``) and cached;
* ``POST /webhook`` (annotation events: ``ANNOTATION_CREATED``, ``ANNOTATION_UPDATED``, ``ANNOTATIONS_CREATED``,
  ``ANNOTATIONS_DELETED``, ``START_TRAINING``, ...) -> 200 at once: the project's refresh
  (:func:`annotate.loop.refresh`) is scheduled ``debounce`` seconds after the last event, in a background thread,
  one at a time per project (events during a refresh schedule one more). The refresh refits the head and writes the
  pending tasks' new predictions under a new ``model_version`` through the REST API, so Label Studio's uncertainty
  sampling serves the now least confident task.

Everything the backend knows is on disk, in the loop's cache (scored pool, head: written whole or not at all), so
a restart loses nothing; it refreshes each project it is asked about once on its first event.

Run: ``python -m annotate labelstudio backend --port 9090`` (``--help``); connect ``http://127.0.0.1:9090`` in the
project's Settings > Model, or pass ``--connect PROJECT`` to connect it through the API.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from fastapi import FastAPI, Request

logger = logging.getLogger(__name__)
EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED", "ANNOTATIONS_DELETED",
          "ANNOTATION_DELETED", "START_TRAINING")


@dataclass
class BackendState:
    """The refreshes of one backend: per project, the time of its last event, whether a refresh runs, the last
    summary and error, and how many ran."""

    pending: dict = field(default_factory=dict)
    running: set = field(default_factory=set)
    last: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)
    rounds: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def create_backend(client, cache_dir, *, settings=None, head_config=None, debounce: float = 5.0,
                   scorer_factory=None) -> FastAPI:
    """The backend app for the Label Studio server of ``client`` (:class:`annotate.labelstudio.client.LabelStudio`).

    Args:
        cache_dir: the loop's cache folder (``ANNOTATE_CACHE_DIR``): one :class:`annotate.cache.DatasetCache` per
            project title, as ``python -m annotate push --tool labelstudio`` fills it.
        settings: :class:`annotate.config.AnnotateSettings` for scoring tasks the loop has not scored.
        debounce: seconds without a new event before a refresh starts.
        scorer_factory: ``(labels, template) -> scorer`` (default: the annotate commands' in-process or HTTP scorer).
    """
    from annotate.cache import DatasetCache
    from annotate.labelstudio.tool import LabelStudioTool

    app = FastAPI(title="zeroshot-preannotate Label Studio ML backend")
    state = BackendState()
    app.state.backend = state

    def tool_of(project_id: int) -> tuple[LabelStudioTool, DatasetCache]:
        project = client.project(project_id)
        tool = LabelStudioTool(client, project)
        return tool, DatasetCache(cache_dir, client.url, "labelstudio", project["title"])

    def run_refresh(project_id: int) -> None:
        from annotate.loop import refresh

        while True:
            with state.lock:
                due = state.pending.get(project_id, 0) + debounce
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, 1.0))
                continue
            with state.lock:
                state.pending.pop(project_id, None)
            try:
                tool, cache = tool_of(project_id)
                summary = refresh(tool, cache, head_config=head_config)
                state.last[project_id] = summary.to_dict()
                state.errors.pop(project_id, None)
                state.rounds[project_id] = state.rounds.get(project_id, 0) + 1
                logger.info("project %s refreshed: %s", project_id, summary.render().replace("\n", "; "))
            except Exception as exc:  # reported by /health; the next event tries again
                logger.exception("refresh of project %s failed", project_id)
                state.errors[project_id] = f"{type(exc).__name__}: {exc}"
            with state.lock:
                if project_id not in state.pending:
                    state.running.discard(project_id)
                    return

    def schedule(project_id: int) -> None:
        with state.lock:
            state.pending[project_id] = time.monotonic()
            if project_id in state.running:
                return
            state.running.add(project_id)
        threading.Thread(target=run_refresh, args=(project_id,), name=f"refresh-{project_id}", daemon=True).start()

    @app.get("/health")
    def health() -> dict:
        return {"status": "UP", "model_class": "zeroshot-preannotate adaptive head",
                "refreshing": sorted(state.running), "rounds": state.rounds, "errors": state.errors}

    @app.post("/setup")
    async def setup(request: Request) -> dict:
        body = await request.json()
        project_id = _project_id(body.get("project"))
        version = None
        if project_id is not None:
            version = client.project(project_id).get("model_version")
        return {"model_version": version or "zeroshot-preannotate"}

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        body = await request.json()
        tasks = body.get("tasks") or []
        project_id = _project_id(body.get("project")) or _project_id((tasks[0] if tasks else {}).get("project"))
        if project_id is None or not tasks:
            return {"results": []}
        tool, cache = tool_of(project_id)
        return {"results": suggestions_for(tool, cache, tasks, settings, scorer_factory, head_config)}

    @app.post("/webhook")
    async def webhook(request: Request) -> dict:
        body = await request.json()
        action = body.get("action")
        project_id = _project_id((body.get("project") or {}).get("id") if isinstance(body.get("project"), dict)
                                 else body.get("project"))
        if project_id is None:
            task = body.get("task") or {}
            project_id = _project_id(task.get("project"))
        if action in EVENTS and project_id is not None:
            schedule(project_id)
            return {"status": "scheduled", "project": project_id, "debounce_s": debounce}
        return {"status": "ignored", "action": action}

    @app.post("/train")
    async def train(request: Request) -> dict:  # the older name of the same event
        body = await request.json()
        project_id = _project_id((body.get("project") or {}).get("id") if isinstance(body.get("project"), dict)
                                 else body.get("project"))
        if project_id is not None:
            schedule(project_id)
        return {"status": "scheduled" if project_id is not None else "ignored"}

    app.state.schedule = schedule
    return app


def _project_id(value) -> int | None:
    """Label Studio names the project ``<id>.<timestamp>`` in /predict and /setup, ``<id>`` elsewhere."""
    if value is None:
        return None
    try:
        return int(str(value).split(".", 1)[0])
    except ValueError:
        return None


def suggestions_for(tool, cache, tasks: list[dict], settings, scorer_factory, head_config) -> list[dict]:
    """One ``{"result", "score", "model_version"}`` a task: the loop's current suggestion (the head saved by the
    last refresh or push on the cached embeddings, else the bias-corrected zero-shot scores); tasks missing from the
    cache are scored and embedded now and cached."""
    import hashlib

    import numpy as np

    from annotate.adaptive import HeadConfig, correct_zero_shot
    from annotate.labelstudio.tool import ID_FIELD
    from annotate.tools import record_id
    from pool.store import shard_table
    from service.head import AdaptiveHead, is_head_dir

    ids, texts = [], []
    for task in tasks:
        data = task.get("data") or {}
        text = str(data.get(tool.config.text_field, ""))
        ids.append(str(data.get(ID_FIELD) or record_id(text, None)))
        texts.append(text)
    pool = cache.load_pool()
    index = pool.index() if pool is not None else {}
    missing = [i for i, rid in enumerate(ids) if rid not in index]
    if missing:
        template = (pool.meta.get("hypothesis_template") if pool is not None else None) or "This text is about {}."
        scorer = (scorer_factory or _default_scorer(settings))(tool.labels, template)
        try:
            scores, embeddings = scorer.score_and_embed([texts[i] for i in missing])
        finally:
            scorer.close()
        new_ids = [ids[i] for i in missing]
        cache.pool.write_shard("predict-" + hashlib.sha256("".join(new_ids).encode()).hexdigest()[:16],
                               shard_table(new_ids, [texts[i] for i in missing], scores, embeddings, tool.labels))
        if not cache.pool.exists():
            cache.pool.write_meta({"labels": list(tool.labels), "hypothesis_template": template, "multi_label": False,
                                   "method": scorer.served_method, "model": scorer.model_id, "agent": scorer.agent,
                                   "encoder": scorer.encoder})
        pool = cache.load_pool()
        index = pool.index()
    rows = [index[rid] for rid in ids]
    if is_head_dir(cache.head_dir):
        head = AdaptiveHead.load(cache.head_dir)
        probabilities = head.predict_proba(pool.embeddings[rows])
        version = f"{(pool.meta.get('encoder') or {}).get('model_id', 'encoder')}:adaptive-head:{head.revision}"
    else:
        bias = correct_zero_shot(pool.scores, head_config or HeadConfig())
        probabilities = bias.apply(pool.scores[rows])
        version = f"{pool.meta.get('agent') or 'zero-shot'}:zero-shot"
    out = []
    for row in np.asarray(probabilities):
        best = int(row.argmax())
        out.append({"result": tool.config.result(tool.labels[best]), "score": round(float(row[best]), 6),
                    "model_version": version})
    return out


def _default_scorer(settings):
    def make(labels, template):
        from pool.scorers import HttpScorer, LocalScorer

        if settings is not None and settings.service_url:
            return HttpScorer(settings.service_url, labels, template, api_key=settings.service_api_key)
        return LocalScorer(labels, template, method="embedding",
                           model=getattr(settings, "model", "default"),
                           engine=getattr(settings, "engine", "onnxruntime"))

    return make
