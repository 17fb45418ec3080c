"""python -m annotate adapt: fits the pool-adapted head on a real AG News slice in-process (no Argilla), saves a head
directory that train/finetune.py --teacher-head accepts, and refuses bad input with one line on stderr."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.head import AdaptiveHead, is_head_dir

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
LABELS = ["world news", "sports", "business", "science and technology"]
TEMPLATE = "This news article is about {}."


def run(*args, module=("-m", "annotate")):
    return subprocess.run([sys.executable, *module, *map(str, args)], capture_output=True, text=True, cwd=str(REPO))


@pytest.fixture(scope="module")
def pool_file(data_dir, tmp_path_factory):
    rows = [json.loads(line) for line in (data_dir / "classification" / "ag_news" /
                                          "train_unlabeled_8k_description_only.jsonl").read_text().splitlines()]
    rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))[:600]]
    path = tmp_path_factory.mktemp("pool") / "pool.jsonl"
    path.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def head_dir(pool_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt")
    args = [a for label in LABELS for a in ("--label", label)]
    result = run("adapt", pool_file, *args, "--hypothesis-template", TEMPLATE, "--output", root / "head",
                 "--cache-dir", root / "cache", "--log-level", "warning")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pseudo-labels of 600 texts" in result.stdout
    return root / "head"


def test_adapt_writes_a_head_fitted_on_the_pool(head_dir, pool_file):
    assert is_head_dir(head_dir)
    head = AdaptiveHead.load(head_dir)
    assert head.labels == LABELS and head.coef.shape == (4, 384)
    assert head.encoder["fingerprint"] and head.encoder["dim"] == 384
    assert head.meta["mode"] == "pseudo-labels" and head.meta["hypothesis_template"] == TEMPLATE
    # its suggestions beat chance on the pool's gold labels (the cached embeddings are what it was fitted on)
    from pool.store import PoolStore

    store = next(p for p in (head_dir.parent / "cache").iterdir() if p.is_dir())
    pool = PoolStore(store).load()
    gold_map = {"World": 0, "Sports": 1, "Business": 2, "Sci/Tech": 3}
    gold = np.array([gold_map[json.loads(line)["label"]] for line in pool_file.read_text().splitlines()])
    assert (head.predict_proba(pool.embeddings).argmax(1) == gold).mean() > 0.6


def test_finetune_accepts_the_head_as_teacher(head_dir, pool_file, tmp_path):
    out = tmp_path / "student"
    store = next(p for p in (head_dir.parent / "cache").iterdir() if p.is_dir())
    result = run("--unlabeled", pool_file, "--unlabeled-limit", "200", "--teacher-head", head_dir,
                 "--teacher-embeddings", store, "--augment", "1", "--student", "fasttext",
                 "--student-config", '{"dim": 32, "buckets": 4096}', "--objective", "soft", "--epochs", "1",
                 "--output-dir", out, module=("train/finetune.py",))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    teacher = report["teacher"]
    assert teacher["head_revision"] == AdaptiveHead.load(head_dir).revision
    assert teacher["stored_embeddings_used"] == 200 and teacher["encoder_passes"] == 0  # no re-embedding
    augmentation = teacher["augmentation"]
    assert augmentation["augmented_texts"] > 100 and augmentation["teacher_passes"] == augmentation["augmented_texts"]
    assert report["data"]["with_teacher_scores"] == 200 and report["size"]["onnx_int8_mb"] > 0
    assert json.loads((out / "config.json").read_text())["id2label"]["3"] == "science and technology"


@pytest.mark.parametrize("args, message", [
    (["--label", "only"], "at least two"),
    (["--label", "a", "--label", "a"], "unique"),
    (["--label", "a", "--label", "b", "--hypothesis-template", "no slot"], "{}"),
])
def test_bad_input_exits_2_with_one_line(args, message, pool_file, tmp_path):
    result = run("adapt", pool_file, *args, "--output", tmp_path / "head")
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and message in result.stderr, result.stderr
    assert not (tmp_path / "head").exists()


def test_missing_pool_exits_2(tmp_path):
    result = run("adapt", tmp_path / "absent.jsonl", "--label", "a", "--label", "b", "--output", tmp_path / "head")
    assert result.returncode == 2 and "not found" in result.stderr and not (tmp_path / "head").exists()
