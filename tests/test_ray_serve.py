"""service/ray_serve.py: the real service app as two Ray Serve replicas on a local Ray instance (loopback only),
real embedded models, real HTTP through Serve's proxy. Nothing is mocked.

Both replicas are ready the moment Serve says the application runs (no replica still loading ever answers, not even
``/ready``); both answer, as their replica ids (the ``x-replica-id`` header against Ray's own list of the replica
actors) show; the answers equal the in-process engine's (the same app, so the same scores); bad input still gets the
app's own 422. Skips with a reason where Ray is not installed (CI installs it).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

pytest.importorskip("ray", reason="Ray is not installed (pip install 'zeroshot-preannotate[scale]'; "
                                  "bash scripts/setup.sh installs it)")

from .conftest import free_port  # noqa: E402

LABELS = ["World", "Sports", "Business", "Sci/Tech"]
TEXTS = ["The striker scored twice in the final minutes.", "Shares fell after the bank cut its forecast.",
         "The new chip doubles battery life in phones.", "Rebels and the army agreed to a ceasefire."]
REPLICA_PREFIX = "SERVE_REPLICA::zeroshot#zeroshot#"  # Serve's replica actor names: app#deployment#replica id


def replica_ids() -> set[str]:
    """The ids of the replicas of the ``zeroshot`` deployment, from Ray's own list of named actors."""
    import ray

    names = [actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)]
    return {name[len(REPLICA_PREFIX):] for name in names if name.startswith(REPLICA_PREFIX)}


def spread(url: str, send, n: int = 24, clients: int = 8) -> list[httpx.Response]:
    """``n`` requests from ``clients`` concurrent clients (``send(client, url)`` makes one), so that Serve's router,
    which picks the less busy of two replicas, sends some to each."""
    with httpx.Client(timeout=120) as client, ThreadPoolExecutor(clients) as pool:
        return list(pool.map(lambda _: send(client, url), range(n)))


@pytest.fixture(scope="module")
def served(cache_dir):
    """The application on two one-CPU replicas, and the ``/ready`` answers of the moment ``start`` returned (Serve
    has the application running): the URL and those answers."""
    import ray
    from ray import serve

    from service.ray_serve import start

    env = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "ZSC_METHOD": "embedding",
           "ZSC_MODEL": "none", "ZSC_CACHE_DIR": str(cache_dir)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=128 * 2**20, logging_level="warning")
    try:
        url = start(replicas=2, num_cpus=1, port=free_port())  # returns once Serve has both replicas running
        first = spread(url, lambda client, url: client.get(url + "/ready"), n=40)  # at once: no waiting, no retry
        yield url, first
    finally:
        serve.shutdown()
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_every_replica_is_ready_once_serve_runs_the_application(served):
    from ray import serve

    url, first = served
    status = serve.status().applications["zeroshot"].deployments["zeroshot"]
    assert status.replica_states.get("RUNNING") == 2, status
    ids = replica_ids()
    assert len(ids) == 2
    assert [r.status_code for r in first] == [200] * len(first), [(r.status_code, r.text[:200]) for r in first]
    assert all(r.json()["status"] == "ready" and r.json()["methods"] == ["embedding"] for r in first)
    answered = {r.headers["x-replica-id"] for r in first}
    answered |= {r.headers["x-replica-id"] for r in spread(url, lambda client, url: client.get(url + "/ready"))}
    assert answered == ids  # both replicas answered /ready, both ready


def test_two_replicas_serve_the_same_app(served):
    url, _ = served
    body = {"texts": TEXTS, "labels": LABELS, "method": "embedding"}
    answers = spread(url, lambda client, url: client.post(url + "/zero-shot", json=body))
    assert [a.status_code for a in answers] == [200] * len(answers), [a.text[:200] for a in answers]  # no 503
    assert {a.headers["x-replica-id"] for a in answers} == replica_ids()  # both replicas answered
    first = answers[0].json()
    assert first["method"] == "embedding" and first["results"][0]["labels"][0] == "Sports"
    for other in answers[1:]:  # whichever replica answered, the same scores
        np.testing.assert_allclose([r["scores"] for r in other.json()["results"]],
                                   [r["scores"] for r in first["results"]], atol=1e-5)


def test_answers_equal_the_in_process_engine(served):
    from pool.scorers import LocalScorer

    url, _ = served
    scorer = LocalScorer(LABELS, "This text is about {}.", method="embedding", embeddings=False)
    try:
        local = scorer.score(TEXTS)
    finally:
        scorer.close()
    answer = httpx.post(url + "/zero-shot", json={"texts": TEXTS, "labels": LABELS, "method": "embedding"},
                        timeout=120)
    assert answer.status_code == 200, answer.text[:500]
    remote = [[dict(zip(r["labels"], r["scores"]))[label] for label in LABELS] for r in answer.json()["results"]]
    np.testing.assert_allclose(remote, local, atol=1e-4)


def test_bad_input_gets_the_apps_422(served):
    url, _ = served
    response = httpx.post(url + "/zero-shot", json={"texts": [], "labels": LABELS}, timeout=30)
    assert response.status_code == 422 and "detail" in response.json()
    assert response.headers["x-replica-id"] in replica_ids()

