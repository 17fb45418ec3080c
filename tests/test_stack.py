"""annotate/stack.py and ``python -m annotate stack``: a newcomer's local Argilla, started, found by the other
commands without any variable, and stopped. Real processes (Redis, osmem, argilla-server) and a real push of the
shipped example pool, scored in-process on the embedded models."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from annotate.dataset import QUESTION

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "topics_120.jsonl"
LABELS = ["sports", "business", "science and technology", "politics"]

pytestmark = [pytest.mark.argilla, pytest.mark.slow]


def annotate(*args: str, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "annotate", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def clean_env(tmp_path, cache_dir):
    """The environment of a newcomer: no ARGILLA_* variable; the stack's state and the caches under tmp_path."""
    from tests.argilla_stack import missing

    reason = missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"Argilla stack not installed in CI: {reason}")
        pytest.skip(f"Argilla stack not available: {reason}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARGILLA_", "ANNOTATE_"))}
    env.update(ANNOTATE_STACK_STATE=str(tmp_path / "stack" / "stack.json"), ANNOTATE_CACHE_DIR=str(tmp_path / "ann"),
               ZSC_CACHE_DIR=str(cache_dir), PYTHONUNBUFFERED="1")
    return env


def test_stack_up_push_the_example_export_and_down_without_any_variable(clean_env, tmp_path):
    state = Path(clean_env["ANNOTATE_STACK_STATE"])
    missing_stack = annotate("stack", "status", env=clean_env)
    assert missing_stack.returncode == 1 and len(missing_stack.stderr.strip().splitlines()) == 1
    assert "stack up" in missing_stack.stderr
    try:
        up = annotate("stack", "up", env=clean_env, timeout=300)
        assert up.returncode == 0, up.stderr[-2000:]
        recorded = json.loads(state.read_text())
        assert recorded["url"].startswith("http://127.0.0.1:") and recorded["url"] in up.stdout
        assert stat.S_IMODE(state.stat().st_mode) == 0o600  # the owner's key and password are in it
        assert recorded["password"] in up.stdout and recorded["password"] != "owner-password-1"
        again = annotate("stack", "up", env=clean_env, timeout=60)
        assert again.returncode == 0 and "already running" in again.stdout and json.loads(state.read_text()) == recorded
        assert annotate("stack", "status", env=clean_env).returncode == 0

        labels = [arg for label in LABELS for arg in ("--label", label)]
        push = annotate("push", str(EXAMPLE), *labels, "--id-column", "id", "--dataset", "example", env=clean_env)
        assert push.returncode == 0, push.stderr[-3000:]
        import argilla as rg

        client = rg.Argilla(api_url=recorded["url"], api_key=recorded["api_key"])
        dataset = client.datasets("example", workspace=recorded["workspace"])
        records = list(dataset.records(with_suggestions=True))
        assert len(records) == 120
        given = {json.loads(line)["text"] for line in EXAMPLE.read_text().splitlines()}
        assert {r.fields["text"] for r in records} == given  # stored exactly as given
        assert all(r.suggestions[QUESTION].value in LABELS for r in records)

        export = annotate("export", str(tmp_path / "out.jsonl"), "--dataset", "example", env=clean_env)
        assert export.returncode == 0, export.stderr[-2000:]
        assert "pending: 120" in export.stdout and (tmp_path / "out.jsonl").read_text() == ""  # nothing reviewed yet
    finally:
        down = annotate("stack", "down", env=clean_env, timeout=120)
    assert down.returncode == 0 and not state.exists()
    assert annotate("stack", "status", env=clean_env).returncode == 1
    # up again on the same data folder: the same login, the pushed dataset still there
    try:
        up = annotate("stack", "up", env=clean_env, timeout=400)
        assert up.returncode == 0, up.stderr[-2000:]
        again = json.loads(state.read_text())
        assert (again["api_key"], again["password"]) == (recorded["api_key"], recorded["password"])
        client = rg.Argilla(api_url=again["url"], api_key=again["api_key"])
        assert len(list(client.datasets("example", workspace=again["workspace"]).records())) == 120
    finally:
        assert annotate("stack", "down", env=clean_env, timeout=120).returncode == 0
