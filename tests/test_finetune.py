"""train/finetune.py on a real slice of AG News: every objective and student learns, the CLI writes a servable
model with its report, and bad input stops it before training with one line on stderr."""

import json
import subprocess
import sys

import numpy as np
import pytest

from train.finetune import student_loss, train_student
from train.student_data import read_exports

pytestmark = pytest.mark.slow

REPO_LABELS = ["World", "Sports", "Business", "Sci/Tech"]


@pytest.fixture(scope="session")
def ag_news_export(data_dir, tmp_path_factory):
    """200 real AG News pool texts in the export format: gold labels as the human ones, the packaged embedding
    teacher's real scores as teacher_scores."""
    from pool.scorers import LocalScorer

    rows = [json.loads(line) for line in (data_dir / "classification" / "ag_news" /
                                          "train_unlabeled_8k_description_only.jsonl").read_text().splitlines()]
    rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))[:200]]
    scorer = LocalScorer(REPO_LABELS, "This text is about {}.", method="embedding", engine="onnxruntime")
    scores = scorer.score([r["text"] for r in rows])
    scorer.close()
    path = tmp_path_factory.mktemp("export") / "reviewed.jsonl"
    with path.open("w") as fh:
        for row, s in zip(rows, scores):
            fh.write(json.dumps({"id": str(hash(row["text"])), "text": row["text"], "label": row["label"],
                                 "status": "submitted", "teacher_scores": dict(zip(REPO_LABELS, s.tolist())),
                                 "labels_order": REPO_LABELS, "agent": scorer.agent}) + "\n")
    return path


def _train(kind, objective, export, minilm_dir, steps=12):
    import torch
    from transformers import AutoTokenizer

    from train.finetune import seed_everything
    from train.student_defaults import LEARNING_RATES
    from train.students import build_student

    seed_everything(0)
    data = read_exports([export])
    train, valid = data.split(0.2, 0)
    model = build_student(kind, labels=data.labels, multi_label=False, base_dir=minilm_dir)
    history = train_student(model, train, valid, AutoTokenizer.from_pretrained(minilm_dir), objective=objective,
                            device=torch.device("cpu"), epochs=10, batch_size=16, lr=LEARNING_RATES[kind],
                            weight_decay=0.0, warmup_ratio=0.0, max_length=64, temperature=2.0, w_hard=0.5, w_soft=0.5,
                            patience=100, seed=0, eval_every=steps, max_steps=steps)
    return history


@pytest.mark.parametrize("objective", ["hard", "soft", "mixed", "mse"])
def test_every_objective_lowers_its_loss(objective, ag_news_export, minilm_dir):
    history = _train("fasttext", objective, ag_news_export, minilm_dir, steps=24)
    last = np.mean([loss for _, loss in history["train_loss"][-1:]])
    assert last < history["initial_train_loss"], history
    assert history["valid_loss"][-1][1] < history["initial_valid_loss"], history


@pytest.mark.parametrize("kind", ["transformer", "cnn", "bilstm"])
def test_every_student_lowers_its_loss(kind, ag_news_export, minilm_dir):
    history = _train(kind, "mixed", ag_news_export, minilm_dir)
    assert history["valid_loss"][-1][1] < history["initial_valid_loss"], history


def test_mixed_loss_is_the_weighted_sum_over_the_rows_that_have_each_target():
    import torch
    import torch.nn.functional as F

    from train.losses import soft_label_loss, soften

    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    hard = torch.tensor([0, -1, 1])
    soft = torch.tensor([[0.7, 0.3], [0.2, 0.8], [float("nan"), float("nan")]])
    got = student_loss(logits, {"hard": hard, "soft": soft}, objective="mixed", multi_label=False, temperature=2.0,
                       w_hard=0.3, w_soft=0.7)
    want = 0.3 * F.cross_entropy(logits[[0, 2]], hard[[0, 2]]) + \
        0.7 * soft_label_loss(logits[:2], soften(soft[:2], 2.0), 2.0)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def run_cli(*args):
    return subprocess.run([sys.executable, "train/finetune.py", *map(str, args)], capture_output=True, text=True,
                          cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))


def test_cli_writes_a_servable_student_and_its_report(ag_news_export, data_dir, tmp_path):
    out = tmp_path / "student"
    result = run_cli("--train", ag_news_export, "--student", "fasttext", "--objective", "mixed", "--epochs", "3",
                     "--eval", data_dir / "classification" / "ag_news" / "test.jsonl", "--eval-text-field", "title",
                     "--eval-text-field", "description", "--eval-limit", "300", "--speed-texts", "64",
                     "--teacher-method", "embedding", "--teacher-engine", "onnxruntime", "--output-dir", out)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "World", "1": "Sports", "2": "Business", "3": "Sci/Tech"}
    for name in ("model.onnx", "model.int8.onnx", "quantization.json", "report.md", "training_curve.png",
                 "confusion_matrix.png", "reliability.png", "tokenizer.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["evaluation"]["int8"]["n"] == 300 and report["evaluation"]["int8"]["accuracy"] > 0.25
    assert report["speed"]["teacher"]["agent"].endswith(":embedding") and report["speed"]["ratio_int8"] > 0
    assert f"{report['evaluation']['int8']['accuracy']:.4f}" in (out / "report.md").read_text()

    # the speed comparison measured again, for several students in one run (here one), rewrites the report
    again = subprocess.run([sys.executable, "-m", "train.student_report", str(out), str(tmp_path / "not-a-student"),
                            "--eval", str(data_dir / "classification" / "ag_news" / "test.jsonl"),
                            "--eval-text-field", "title", "--speed-texts", "32", "--teacher-method", "embedding",
                            "--teacher-engine", "onnxruntime"], capture_output=True, text=True,
                           cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert again.returncode == 2 and "not-a-student has no report.json" in again.stderr  # the bad directory
    assert again.stderr.strip().splitlines()[-1].startswith("error:")
    again = subprocess.run([sys.executable, "-m", "train.student_report", str(out),
                            "--eval", str(data_dir / "classification" / "ag_news" / "test.jsonl"),
                            "--eval-text-field", "title", "--speed-texts", "32", "--teacher-method", "embedding",
                            "--teacher-engine", "onnxruntime"], capture_output=True, text=True,
                           cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert again.returncode == 0, again.stderr[-3000:]
    speed = json.loads((out / "report.json").read_text())["speed"]
    assert speed["texts"] == 32 and speed["command"].startswith("python -m train.student_report")
    assert "Speed on 32 evaluation texts" in (out / "report.md").read_text()


@pytest.mark.parametrize("case, message", [
    ("empty", "holds no records"),
    ("unseen", "unseen in training"),
    ("single", "same class"),
    ("width", "teacher_scores has width 3"),
])
def test_bad_input_stops_before_training(case, message, tmp_path):
    export = tmp_path / "export.jsonl"
    rows = [{"text": f"text {i}", "label": REPO_LABELS[i % 2], "status": "submitted", "labels_order": REPO_LABELS,
             "teacher_scores": [0.25] * 4} for i in range(6)]
    if case == "empty":
        rows = []
    if case == "single":
        rows = [dict(r, label="World") for r in rows]
    if case == "width":
        rows[3]["teacher_scores"] = [0.2, 0.3, 0.5]
    export.write_text("".join(json.dumps(r) + "\n" for r in rows))
    evaluation = tmp_path / "eval.jsonl"
    evaluation.write_text(json.dumps({"text": "x", "label": "Weather" if case == "unseen" else "World"}) + "\n")
    out = tmp_path / "out"
    result = run_cli("--train", export, "--eval", evaluation, "--student", "fasttext", "--output-dir", out)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr, result.stderr
    assert not out.exists()


@pytest.fixture(scope="module")
def head_taught_pool(data_dir, tmp_path_factory):
    """400 real AG News pool texts, the pool-adapted head fitted on them (python -m annotate adapt's code, packaged
    embedding teacher in-process), and its soft labels for the first 300 (from the stored embeddings)."""
    from annotate.adapt_pool import adapt_pool
    from pool.scorers import LocalScorer
    from train.head_teacher import HeadTeacher

    labels = ["world news", "sports", "business", "science and technology"]
    rows = [json.loads(line) for line in (data_dir / "classification" / "ag_news" /
                                          "train_unlabeled_8k_description_only.jsonl").read_text().splitlines()]
    texts = [rows[i]["text"] for i in np.random.default_rng(1).permutation(len(rows))[:400]]
    root = tmp_path_factory.mktemp("head")
    scorer = LocalScorer(labels, "This news article is about {}.", method="embedding", engine="onnxruntime")
    try:
        result = adapt_pool(texts, labels, "This news article is about {}.", scorer, root / "head", root / "cache")
    finally:
        scorer.close()
    teacher = HeadTeacher(result.directory, embedding_stores=[p for p in (root / "cache").iterdir() if p.is_dir()])
    soft = teacher.scores(texts[:300])
    assert teacher.encoder_passes == 0
    return labels, texts[:300], soft


@pytest.mark.parametrize("kind", ["fasttext", "cnn", "bilstm"])
def test_tiny_student_from_a_head_teacher_beats_the_majority_class(kind, head_taught_pool, data_dir, minilm_dir):
    import torch
    from transformers import AutoTokenizer

    from train.finetune import seed_everything
    from train.student_data import Example, StudentData
    from train.students import build_student

    labels, texts, soft = head_taught_pool
    gold_map = {"World": 0, "Sports": 1, "Business": 2, "Sci/Tech": 3}
    test_rows = [json.loads(line) for line in (data_dir / "classification" / "ag_news" / "test.jsonl").read_text()
                 .splitlines()[:300]]
    test_texts = [f"{r['title']} {r['description']}" for r in test_rows]
    gold = np.array([gold_map[r["label"]] for r in test_rows])
    majority = np.bincount(gold).max() / len(gold)
    seed_everything(0)
    data = StudentData(labels, False, [Example(t, soft=s) for t, s in zip(texts, soft)])
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    options = {"fasttext": {"dim": 64, "buckets": 4096}, "cnn": {"filters": 50}, "bilstm": {"hidden": 64}}[kind]
    model = build_student(kind, labels=labels, multi_label=False, base_dir=minilm_dir, hyperparameters=options)
    lr = {"fasttext": 3e-2, "cnn": 3e-3, "bilstm": 1e-2}[kind]  # a bag of embeddings needs a large step
    train_student(model, data, StudentData(labels, False, []), tokenizer, objective="soft", device=torch.device("cpu"),
                  epochs=4, batch_size=32, lr=lr, weight_decay=0.0, warmup_ratio=0.0, max_length=64, temperature=1.0,
                  w_hard=0.5, w_soft=0.5, patience=100, seed=0)
    with torch.inference_mode():
        enc = tokenizer(test_texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        predicted = model(enc["input_ids"], enc["attention_mask"]).argmax(1).numpy()
    accuracy = float((predicted == gold).mean())
    assert accuracy > majority + 0.1, (kind, accuracy, majority)


def test_few_reviews_per_label_warn_with_the_label_the_count_and_the_minimum(tmp_path, caplog):
    """README step 5's case: a hard student on 10 reviews a label (40 in all) is below the measured minimum, so
    one warning line names each short label, its count and the minimum; enough reviews, or soft labels only, do
    not warn."""
    import logging

    from train.finetune import MIN_REVIEWS_PER_LABEL, warn_few_reviews

    def export(counts):
        path = tmp_path / f"export{sum(counts)}.jsonl"
        rows = [{"text": f"{label} text {i}", "label": label, "status": "submitted", "labels_order": REPO_LABELS}
                for label, n in zip(REPO_LABELS, counts) for i in range(n)]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return read_exports([path])

    few = export([10, 10, 10, MIN_REVIEWS_PER_LABEL])
    with caplog.at_level(logging.WARNING, logger="train.finetune"):
        line = warn_few_reviews(few, "hard")
    assert line is not None
    records = [r for r in caplog.records if r.name == "train.finetune" and r.levelno == logging.WARNING]
    assert len(records) == 1 and records[0].getMessage() == line and "\n" not in line
    for label in ("World", "Sports", "Business"):
        assert f"'{label}' has 10" in line
    assert "Sci/Tech" not in line and f"minimum {MIN_REVIEWS_PER_LABEL}" in line
    assert warn_few_reviews(few, "mixed") is not None
    assert warn_few_reviews(few, "soft") is None  # soft labels only: the reviews' count is not what it learns from
    assert warn_few_reviews(export([MIN_REVIEWS_PER_LABEL] * 4), "hard") is None
