"""annotate/labelstudio/backend.py: the ML backend over real HTTP, connected to a real Label Studio server, which
sends it its annotation events; the pool is the example file, scored by the real packaged encoder."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from annotate.cache import DatasetCache
from annotate.labelstudio.backend import create_backend
from annotate.labelstudio.client import LabelStudio
from annotate.labelstudio.tool import open_project
from annotate.loop import push
from annotate.tools import record_id

from .conftest import REPO, LiveServer

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]
LABELS = ["sports", "business", "science and technology", "politics"]
TEMPLATE = "This text is about {}."


@pytest.fixture(scope="module")
def project(labelstudio, tmp_path_factory):
    from pool.scorers import LocalScorer

    rows = [json.loads(line) for line in (REPO / "examples/topics_120.jsonl").read_text().splitlines()]
    client = LabelStudio(labelstudio.url, labelstudio.api_key)
    tool = open_project(client, "backend topics", labels=LABELS, create=True)
    cache_dir = tmp_path_factory.mktemp("cache")
    cache = DatasetCache(cache_dir, client.url, "labelstudio", "backend topics")
    scorer = LocalScorer(LABELS, TEMPLATE, method="embedding")
    try:
        push([(record_id(r["text"], None), r["text"]) for r in rows[:100]], tool, scorer, cache, template=TEMPLATE,
             progress=False)
    finally:
        scorer.close()
    gold = {record_id(r["text"], None): r["label"] for r in rows}
    return client, tool, cache_dir, gold, rows


def test_connected_backend_answers_predict_and_learns_from_annotation_events(project):
    client, tool, cache_dir, gold, rows = project
    with LiveServer(create_backend(client, cache_dir, debounce=0.5)) as backend:
        assert httpx.get(backend.url + "/health").json()["status"] == "UP"
        client.add_ml_backend(tool.id, backend.url)  # what Settings > Model does; Label Studio calls /health, /setup
        assert client.ml_backends(tool.id)[0]["readable_state"] == "Connected"
        tasks = client.tasks(tool.id)[:5]
        answer = httpx.post(backend.url + "/predict", json={"tasks": tasks, "project": f"{tool.id}.123"}).json()
        current = {r.key: r for r in tool.records()}
        assert [a["result"][0]["value"]["choices"][0] for a in answer["results"]] == \
            [current[t["id"]].suggestion for t in tasks]  # one result a task, in order: the loop's suggestions
        version = client.project(tool.id)["model_version"]
        began = time.monotonic()
        event = httpx.post(backend.url + "/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": tool.id}})
        assert event.json()["status"] == "ignored" and time.monotonic() - began < 1
        for record in sorted(tool.records(), key=lambda r: r.score)[:25]:  # a person in the UI, as Label Studio sees it
            client.create_annotation(record.key, tool.config.result(gold[record.id]))
        deadline = time.monotonic() + 120
        while httpx.get(backend.url + "/health").json()["rounds"].get(str(tool.id), 0) < 1:
            assert time.monotonic() < deadline, httpx.get(backend.url + "/health").json()
            time.sleep(0.5)
        assert client.project(tool.id)["model_version"] != version  # refitted on the events, a new version
        pending = [r for r in tool.records() if r.pending]
        assert pending and all(r.agent == client.project(tool.id)["model_version"] for r in pending)


def test_a_restarted_backend_answers_from_disk_and_scores_tasks_it_never_saw(project):
    client, tool, cache_dir, gold, rows = project
    unseen = rows[110]["text"]
    task = client.import_tasks(tool.id, [{"data": {"text": unseen}}])[0]  # a person's own import: no zsp_id
    with LiveServer(create_backend(client, cache_dir)) as backend:  # a new process's state: nothing in memory
        answer = httpx.post(backend.url + "/predict", json={
            "tasks": [t for t in client.tasks(tool.id) if t["id"] == task], "project": str(tool.id)}).json()
    result = answer["results"][0]
    assert result["result"][0]["value"]["choices"][0] in LABELS and 0 < result["score"] <= 1
    assert ":adaptive-head:" in result["model_version"]  # the head saved on disk by the earlier refresh
    cache = DatasetCache(cache_dir, client.url, "labelstudio", "backend topics")
    assert record_id(unseen, None) in cache.load_pool().index()  # scored once, cached
