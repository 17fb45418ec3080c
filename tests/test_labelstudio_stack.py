"""annotate/labelstudio/stack.py and ``python -m annotate stack ... --tool labelstudio``: a newcomer's local Label
Studio, started, found by every loop command without any variable, and stopped; real processes, the shipped example
pool pushed and scored in-process on the embedded encoder."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "topics_120.jsonl"
LABELS = ["sports", "business", "science and technology", "politics"]

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]


def annotate(*args: str, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "annotate", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def clean_env(tmp_path, cache_dir):
    from annotate.labelstudio.stack import missing

    reason = missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"Label Studio not installed in CI: {reason}")
        pytest.skip(f"Label Studio not available: {reason}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARGILLA_", "ANNOTATE_", "LABEL_STUDIO_"))
           or k == "LABEL_STUDIO_STACK_VENV"}
    env.update(ANNOTATE_LS_STACK_STATE=str(tmp_path / "stack" / "ls.json"), ANNOTATE_CACHE_DIR=str(tmp_path / "ann"),
               ANNOTATE_TOOL="labelstudio", ZSC_CACHE_DIR=str(cache_dir), PYTHONUNBUFFERED="1",
               USERNAME="someone", PORT="1")  # variables Label Studio would read as its own: the stack drops them
    return env


def test_stack_up_push_refresh_export_and_down_without_any_variable(clean_env, tmp_path):
    state = Path(clean_env["ANNOTATE_LS_STACK_STATE"])
    missing_stack = annotate("stack", "status", env=clean_env)
    assert missing_stack.returncode == 1 and len(missing_stack.stderr.strip().splitlines()) == 1
    assert "stack up --tool labelstudio" in missing_stack.stderr
    up = annotate("stack", "up", env=clean_env)
    assert up.returncode == 0, up.stderr
    assert "Label Studio started at http://127.0.0.1:" in up.stdout and "UI login: admin@localhost" in up.stdout
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    recorded = json.loads(state.read_text())
    try:
        assert annotate("stack", "up", env=clean_env).stdout.startswith("Label Studio already running")
        pushed = annotate("push", str(EXAMPLE), "--dataset", "topics", *sum((["-l", x] for x in LABELS), []),
                          env=clean_env)
        assert pushed.returncode == 0, pushed.stderr
        assert "added 120" in pushed.stdout and f"{recorded['url']}/projects/" in pushed.stdout
        refreshed = annotate("refresh", "--dataset", "topics", env=clean_env)
        assert refreshed.returncode == 0, refreshed.stderr
        out = tmp_path / "export.jsonl"
        exported = annotate("export", str(out), "--dataset", "topics", env=clean_env)
        assert exported.returncode == 0 and "exported 0 rows" in exported.stdout  # nobody reviewed yet
        wrong = annotate("accept", "--dataset", "nope", env=clean_env)
        assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1 and "no Label Studio project" in wrong.stderr
    finally:
        down = annotate("stack", "down", env=clean_env)
    assert down.returncode == 0 and not state.exists()
    gone = annotate("export", str(tmp_path / "x.jsonl"), "--dataset", "topics", env=clean_env)
    assert gone.returncode == 2 and "LABEL_STUDIO_URL" in gone.stderr  # the state file went with the server
