"""The teacher build: loss, batching, data mix, recasting, and a resumable training run on real pairs."""

import json
import math

import pytest
import torch

from train.build_teacher import length_grouped_batches, partial_label_loss, train
from train.evaluate import predict_nli
from train.nli_data import (
    ALLOWED_CLASSES,
    DEFAULT_MIX,
    MixEntry,
    NLIPair,
    decontaminate,
    load_mix,
    mix_summary,
    read_pairs,
)


def test_partial_label_loss_is_cross_entropy_or_the_marginal():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]])
    allowed = torch.tensor([[False, False, True], [True, True, False]])
    p = torch.softmax(logits, dim=-1)
    expected = -(math.log(p[0, 2]) + math.log(p[1, 0] + p[1, 1])) / 2
    assert partial_label_loss(logits, allowed).item() == pytest.approx(expected, rel=1e-6)
    one_hot = torch.tensor([[True, False, False], [False, True, False]])
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1]))
    assert partial_label_loss(logits, one_hot).item() == pytest.approx(ce.item(), rel=1e-6)


def test_length_grouped_batches_cover_every_index_once_with_little_padding():
    lengths = [(i * 7919) % 301 for i in range(1000)]
    batches = length_grouped_batches(lengths, 32, seed=3, group_batches=8)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(1000))
    assert length_grouped_batches(lengths, 32, seed=3, group_batches=8) == batches  # deterministic
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 50  # random batches of 32 would spread over ~280


def test_read_pairs_rejects_unknown_labels(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"premise": "a", "hypothesis": "b", "label": "maybe"}) + "\n")
    with pytest.raises(ValueError, match="unknown label 'maybe'"):
        read_pairs(path)


def test_default_mix_loads_with_caps_and_known_labels(data_dir):
    pairs = load_mix(data_dir / "nli" / "train", DEFAULT_MIX, seed=0)
    summary = mix_summary(pairs)
    assert set(summary) == {e.file.removesuffix(".jsonl") for e in DEFAULT_MIX}
    assert summary["breaking_nli"]["contradiction"] == 1500  # rebalanced from 87% contradiction
    assert {p.label for p in pairs} <= set(ALLOWED_CLASSES)
    assert "not_entailment" in summary["fever_rte_dev"]
    eval_premises = {p.premise.strip() for p in read_pairs(data_dir / "nli" / "eval" / "mnli_dev_matched.jsonl")}
    assert eval_premises & {p.premise.strip() for p in pairs}  # TaxiNLI reuses some MNLI dev premises
    kept, removed = decontaminate(pairs, data_dir / "nli" / "eval")
    assert removed > 0 and len(kept) == len(pairs) - removed
    assert not eval_premises & {p.premise.strip() for p in kept}


def test_recast_topics_makes_one_entailment_and_one_contradiction_per_kept_premise(minilm_dir):
    from train.recast import RECAST_TEMPLATES, read_topics, recast_topics

    premises = ["The quarterback threw three touchdowns as the team won the championship game.",
                "The central bank raised interest rates to curb inflation in the economy.",
                "The new smartphone ships with a faster processor and better camera software.",
                "Heavy rain and strong winds are forecast for the coast this weekend."]
    topics = read_topics()
    pairs = recast_topics(premises, topics, minilm_dir, seed=0, min_margin=0.0)
    assert len(pairs) == 2 * len(premises)
    entail = {p.premise: p.hypothesis for p in pairs if p.label == "entailment"}
    assert any(t in entail[premises[0]] for t in ("sports",))
    for p in pairs:
        assert any(p.hypothesis.startswith(t.split("{}")[0]) for t in RECAST_TEMPLATES)


@pytest.mark.slow
def test_training_improves_and_resumes_from_its_checkpoint(tiny_model_dir, data_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    pairs = [p for p in read_pairs(data_dir / "nli" / "train" / "cad_snli.jsonl")[:96]]
    pairs += read_pairs(data_dir / "nli" / "train" / "fever_rte_dev.jsonl")[:32]  # 2-class rows too
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    options = dict(device=torch.device("cpu"), epochs=3, batch_size=16, lr=1e-3, warmup_ratio=0.0,
                   weight_decay=0.0, max_length=48, seed=0, checkpoint_every=1000)

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    first = train(model, tokenizer, pairs, tmp_path, time_budget_s=0.0, **options)  # budget stops after 1 step
    assert first["step"] == 1 and first["stopped_by_budget"]
    assert (tmp_path / "checkpoint.pt").is_file()

    resumed = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    state = train(resumed, tokenizer, pairs, tmp_path, time_budget_s=1e9, **options)
    assert state["step"] == state["total_steps"] == 24 and state["pairs_seen"] == 3 * len(pairs)
    assert state["loss_curve"] == [] or state["loss_curve"][-1][1] < 1.2
    before = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    assert not torch.equal(before.classifier.weight, resumed.classifier.weight)
    # fitting 128 pairs for 3 epochs at a high rate: training accuracy beats chance
    preds = predict_nli(resumed, tokenizer, pairs, device=torch.device("cpu"), max_length=48)
    gold_ok = [int(preds[i]) in ALLOWED_CLASSES[p.label] for i, p in enumerate(pairs)]
    assert sum(gold_ok) / len(pairs) > 0.45


def test_mix_entries_name_their_licence():
    assert all(isinstance(e, MixEntry) and e.licence for e in DEFAULT_MIX)
    assert NLIPair("p", "h", "entailment", "s").label == "entailment"


def test_cli_refuses_a_missing_data_dir_with_one_line(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "train.build_teacher", "--data-dir", str(tmp_path / "nowhere"),
                           "--output-dir", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--data-dir" in proc.stderr
    assert not (tmp_path / "out").exists()
