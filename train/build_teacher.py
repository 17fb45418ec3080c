"""Build the project's NLI teacher: an encoder + 3-way entailment head trained on NLI pairs.

No pretrained MNLI model can be had offline, so the embedded default model of the service is made
here: the sentence encoder all-MiniLM-L6-v2 (or any Hugging Face encoder) gets a
``contradiction / neutral / entailment`` head and is trained on the licence-clean NLI mix of
:mod:`train.nli_data` plus topic pairs recast by :mod:`train.recast`, then evaluated on MNLI
dev-matched, SNLI test and XNLI-en dev (accuracy, per-class F1) and zero-shot on AG News and
emotion through the service's own scoring code. The run is resumable (``--work-dir`` keeps the
checkpoint; running the same command again continues) and device-agnostic (CUDA when present).

Example::

    python -m train.build_teacher --output-dir service/models/nli-minilm-l6 --weights-dtype float16
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import random
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import torch
import typer
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

from service.sources import PACKAGED_MINILM, default_cache_dir, resolve_model
from train.evaluate import evaluate_nli
from train.nli_data import ALLOWED_CLASSES, DEFAULT_MIX, NLI_CLASSES, NLIPair, decontaminate, load_mix, mix_summary
from train.recast import read_topics, recast_topics

logger = logging.getLogger("train.build_teacher")
app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0], rich_markup_mode=None)

CHECKPOINT = "checkpoint"


def partial_label_loss(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of the set of allowed classes (mean over the batch).

    ``loss_i = -log sum_{c in allowed_i} softmax(logits_i)_c``. With one allowed class this is
    plain cross-entropy; with ``{contradiction, neutral}`` it is the marginal likelihood of
    ``not_entailment`` for the 2-class NLI files.

    Args:
        logits: ``(batch, 3)`` float.
        allowed: ``(batch, 3)`` bool mask, at least one True per row.
    """
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return -torch.logsumexp(log_probs.masked_fill(~allowed, float("-inf")), dim=-1).mean()


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int, *, group_batches: int = 64) -> list[list[int]]:
    """Shuffle, sort by length within groups of ``group_batches`` batches, and shuffle the batches.

    The same idea as Hugging Face's ``LengthGroupedSampler``: batches of similar lengths need
    little padding, while the order of batches stays random. Deterministic for a seed.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    span = batch_size * group_batches
    for start in range(0, len(order), span):
        group = sorted(order[start:start + span], key=lambda i: lengths[i])
        batches.extend(group[i:i + batch_size] for i in range(0, len(group), batch_size))
    rng.shuffle(batches)
    return batches


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _atomic_save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def build_training_set(nli_train_dir: Path, nli_eval_dir: Path, work_dir: Path, *, seed: int, recast: bool,
                       recast_max_premises: int, device: torch.device) -> list[NLIPair]:
    """The mix plus recast topic pairs, cached as JSONL in ``work_dir`` so a resumed run reuses it.

    Pairs whose premise occurs in an evaluation file are dropped (:func:`train.nli_data.decontaminate`).
    """
    cache = work_dir / "train_pairs.jsonl"
    if cache.is_file():
        return _decontaminated(read_pairs_with_source(cache), nli_eval_dir)
    pairs = _decontaminated(load_mix(nli_train_dir, DEFAULT_MIX, seed), nli_eval_dir)
    if recast:
        premises = sorted({p.premise for p in pairs if len(p.premise.split()) >= 8})
        random.Random(seed).shuffle(premises)
        premises = premises[:recast_max_premises]
        topics = read_topics()
        cap = max(1, int(2.5 * len(premises) / len(topics)))
        pairs += recast_topics(premises, topics, resolve_model(PACKAGED_MINILM).path, seed=seed,
                               max_per_topic=cap, device=str(device))
    with cache.open("w", encoding="utf-8") as fh:
        for p in pairs:
            fh.write(json.dumps(asdict(p), ensure_ascii=False) + "\n")
    return pairs


def _decontaminated(pairs: list[NLIPair], nli_eval_dir: Path) -> list[NLIPair]:
    kept, removed = decontaminate(pairs, nli_eval_dir)
    logger.info("dropped %d training pairs whose premise occurs in %s", removed, nli_eval_dir)
    return kept


def read_pairs_with_source(path: Path) -> list[NLIPair]:
    with path.open(encoding="utf-8") as fh:
        return [NLIPair(**json.loads(line)) for line in fh]


def train(model, tokenizer, pairs: list[NLIPair], work_dir: Path, *, device: torch.device, epochs: float,
          batch_size: int, lr: float, warmup_ratio: float, weight_decay: float, max_length: int, seed: int,
          checkpoint_every: int, time_budget_s: float) -> dict:
    """Train with resumable checkpoints; returns run statistics (steps, pairs seen, seconds, losses)."""
    lengths = [len(p.premise) + len(p.hypothesis) for p in pairs]
    n_epochs = max(1, math.ceil(epochs))
    schedule = [b for e in range(n_epochs) for b in length_grouped_batches(lengths, batch_size, seed + e)]
    total_steps = int(len(schedule) * epochs / n_epochs)
    schedule = schedule[:total_steps]
    no_decay = ("bias", "LayerNorm.weight", "layer_norm")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)], "weight_decay": weight_decay},
        {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * total_steps), total_steps)
    state = {"step": 0, "seconds": 0.0, "pairs_seen": 0, "loss_curve": [], "stopped_by_budget": False}
    ckpt = work_dir / f"{CHECKPOINT}.pt"
    if ckpt.is_file():
        saved = torch.load(ckpt, map_location=device, weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = saved["state"]
        torch.set_rng_state(saved["torch_rng"])
        logger.info("resumed from %s at step %d/%d (%.0f s trained)", ckpt, state["step"], total_steps, state["seconds"])
    if state["step"] >= total_steps:
        return state

    def save() -> None:
        _atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                      "state": state, "torch_rng": torch.get_rng_state()}, ckpt)

    allowed_table = torch.zeros(len(ALLOWED_CLASSES), 3, dtype=torch.bool)
    label_index = {label: i for i, label in enumerate(ALLOWED_CLASSES)}
    for label, i in label_index.items():
        allowed_table[i, list(ALLOWED_CLASSES[label])] = True
    use_amp = device.type == "cuda"
    model.train()
    start, running = time.monotonic() - state["seconds"], []
    bar = tqdm(total=total_steps, initial=state["step"], desc="training", unit="step")
    for step in range(state["step"], total_steps):
        batch = [pairs[i] for i in schedule[step]]
        enc = tokenizer([p.premise for p in batch], [p.hypothesis for p in batch], padding=True,
                        truncation="only_first", max_length=max_length, return_tensors="pt").to(device)
        allowed = allowed_table[[label_index[p.label] for p in batch]].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = model(**enc).logits
        loss = partial_label_loss(logits, allowed)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        running.append(loss.item())
        state["step"], state["pairs_seen"] = step + 1, state["pairs_seen"] + len(batch)
        state["seconds"] = time.monotonic() - start
        bar.update(1)
        if len(running) == 50:
            state["loss_curve"].append((state["step"], float(np.mean(running))))
            bar.set_postfix(loss=f"{np.mean(running):.3f}", pairs_per_s=f"{state['pairs_seen'] / state['seconds']:.1f}")
            running = []
        if state["step"] % checkpoint_every == 0:
            save()
        if state["seconds"] > time_budget_s:
            logger.warning("time budget reached at step %d/%d: stopping early", state["step"], total_steps)
            state["stopped_by_budget"] = True
            break
    bar.close()
    save()
    state["total_steps"] = total_steps
    return state


def write_model_card(output_dir: Path, info: dict) -> None:
    """README.md for the model directory; every number comes from ``info`` (the run's metrics.json)."""
    lines = [
        "---", "license: other", "pipeline_tag: zero-shot-classification", "language: en", "---", "",
        f"# {info['name']}", "",
        "An NLI cross-encoder (premise, hypothesis -> contradiction / neutral / entailment) built by "
        "`train/build_teacher.py` of this project, for zero-shot classification with Hugging Face's "
        "`zero-shot-classification` pipeline or this project's service.", "",
        f"- Base model: `{info['base_model']}`",
        f"- Head: `{json.dumps(info['id2label'])}`",
        f"- Weights stored as {info['weights_dtype']} (upcast to float32 when loaded).",
        "- Licence: the base encoder is Apache-2.0; the training data's terms are listed below (several are "
        "CC BY-SA, one C-UDA 1.0): check their share-alike and attribution terms for your use.",
        f"- Training: {info['train']['pairs_seen']:,} pairs seen in {info['train']['step']:,} steps, "
        f"{info['train']['seconds'] / 60:.1f} min on {info['device']}"
        + (" (stopped by the time budget)" if info['train'].get('stopped_by_budget') else "") + ".", "",
        "## Training data", "",
        "| source | licence | entailment | neutral | contradiction | not_entailment | total |",
        "|---|---|---|---|---|---|---|",
    ]
    licences = {e.file.removesuffix(".jsonl"): e.licence for e in DEFAULT_MIX}
    licences["recast_topics"] = "derived from the premises above; labels by all-MiniLM-L6-v2 (Apache-2.0)"
    for src, counts in info["data"].items():
        lines.append(f"| {src} | {licences.get(src, '?')} | " + " | ".join(
            str(counts.get(k, 0)) for k in ("entailment", "neutral", "contradiction", "not_entailment", "total")) + " |")
    lines += ["", "`not_entailment` rows (2-class files) are trained with the marginal likelihood "
              "-log(p_neutral + p_contradiction). `recast_topics`: premises of the mix labelled with "
              "generic topics (`train/topics.txt`) by the sentence encoder all-MiniLM-L6-v2 "
              "(see `train/recast.py`); AG News and emotion are not in the training data.", "",
              "## Hyperparameters", "", "```json", json.dumps(info["hyperparameters"], indent=2), "```", "",
              "## NLI evaluation", "", "| set | n | accuracy | F1 entailment | F1 neutral | F1 contradiction |",
              "|---|---|---|---|---|---|"]
    for name, r in info["nli_eval"].items():
        lines.append(f"| {name} | {r['n']} | {r['accuracy']:.4f} | {r['f1']['entailment']:.4f} | "
                     f"{r['f1']['neutral']:.4f} | {r['f1']['contradiction']:.4f} |")
    if info.get("zero_shot"):
        lines += ["", "## Zero-shot classification", "",
                  "| dataset | template | labels | n | accuracy | macro-F1 |", "|---|---|---|---|---|---|"]
        for r in info["zero_shot"]:
            lines.append(f"| {r['dataset']} | `{r['template']}` | {', '.join(r['labels'])} | {r['n']} | "
                         f"{r['accuracy']:.4f} | {r['macro_f1']:.4f} |")
    lines += ["", "Reproduce: `" + info["command"] + "`", ""]
    (output_dir / "README.md").write_text("\n".join(lines), encoding="utf-8")


def fail(message: str) -> None:
    """One line on stderr and exit code 2 (bad command-line input)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@app.command()
def main(
    output_dir: Annotated[Path, typer.Option(help="Where to write the Hugging Face model directory.")] = Path("runs/teacher"),
    base_model: Annotated[str, typer.Option(help="Encoder to start from: packaged:all-MiniLM-L6-v2, a directory or a hub id.")] = PACKAGED_MINILM,
    data_dir: Annotated[Path, typer.Option(help="The shared data folder (holds nli/ and classification/).")] = Path("../shared/data"),
    work_dir: Annotated[Optional[Path], typer.Option(help="Checkpoints and cached training pairs; rerun to resume. Default: <cache>/build_teacher/<output-dir name>")] = None,
    epochs: Annotated[float, typer.Option(min=0.01)] = 1.0,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, linear warmup and decay).")] = 5e-5,
    warmup_ratio: float = 0.06,
    weight_decay: float = 0.01,
    max_length: Annotated[int, typer.Option(help="Max tokens per pair in training (premise truncated first).")] = 128,
    seed: int = 13,
    recast: Annotated[bool, typer.Option(help="Add topic pairs recast from the mix's premises (train/recast.py).")] = True,
    recast_max_premises: int = 16000,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 200,
    time_budget_minutes: Annotated[float, typer.Option(help="Stop training (and still evaluate and save) after this much training time.")] = 60.0,
    device: Annotated[str, typer.Option(help="auto (CUDA if present), cpu, cuda, cuda:1 ...")] = "auto",
    weights_dtype: Annotated[str, typer.Option(help="float32, or float16 to halve the stored weights (loaded as float32).")] = "float32",
    eval_limit: Annotated[Optional[int], typer.Option(help="Evaluate on the first N pairs of each NLI eval file.")] = None,
    zero_shot_eval: Annotated[bool, typer.Option(help="Also evaluate zero-shot on AG News and emotion (train/evaluate.py).")] = True,
    zero_shot_limit: Annotated[Optional[int], typer.Option(help="Texts per zero-shot dataset (default: the full test split).")] = None,
) -> None:
    """Train, evaluate and write the NLI teacher (resumable: run the same command again to continue)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if weights_dtype not in ("float32", "float16"):
        fail("--weights-dtype must be float32 or float16")
    nli_train, nli_eval = data_dir / "nli" / "train", data_dir / "nli" / "eval"
    if not nli_train.is_dir():
        fail(f"--data-dir: {nli_train} not found; point --data-dir at the shared data folder (holds nli/)")
    torch.manual_seed(seed)
    dev = pick_device(device)
    if dev.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    work = Path(work_dir or default_cache_dir() / "build_teacher" / output_dir.name)
    work.mkdir(parents=True, exist_ok=True)
    command = "python -m train.build_teacher " + " ".join(sys.argv[1:])

    pairs = build_training_set(nli_train, nli_eval, work, seed=seed, recast=recast, recast_max_premises=recast_max_premises, device=dev)
    summary = mix_summary(pairs)
    logger.info("training pairs: %d %s", len(pairs), json.dumps({k: v["total"] for k, v in summary.items()}))

    base = resolve_model(base_model)
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    id2label = dict(enumerate(NLI_CLASSES))
    model = AutoModelForSequenceClassification.from_pretrained(
        base.path, num_labels=3, id2label=id2label, label2id={v: k for k, v in id2label.items()},
        attn_implementation="eager").to(dev)
    stats = train(model, tokenizer, pairs, work, device=dev, epochs=epochs, batch_size=batch_size, lr=lr,
                  warmup_ratio=warmup_ratio, weight_decay=weight_decay, max_length=max_length, seed=seed,
                  checkpoint_every=checkpoint_every, time_budget_s=time_budget_minutes * 60)
    nli_metrics = evaluate_nli(model, tokenizer, nli_eval, device=dev, limit=eval_limit)

    output_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("model.safetensors", "pytorch_model.bin"):
        (output_dir / stale).unlink(missing_ok=True)
    model.config.architectures = ["BertForSequenceClassification"] if model.config.model_type == "bert" else model.config.architectures
    to_save = model.to("cpu").to(torch.float16) if weights_dtype == "float16" else model.to("cpu")
    to_save.save_pretrained(output_dir, safe_serialization=True)
    model.to(torch.float32)
    tokenizer.save_pretrained(output_dir)

    info = {
        "name": output_dir.name, "base_model": base_model, "id2label": id2label, "weights_dtype": weights_dtype,
        "device": f"{dev.type} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else platform.processor() or 'cpu'}, "
                  f"{torch.get_num_threads()} threads)",
        "data": summary, "train": stats, "nli_eval": nli_metrics, "command": command,
        "hyperparameters": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "warmup_ratio": warmup_ratio,
                            "weight_decay": weight_decay, "max_length": max_length, "seed": seed, "recast": recast,
                            "recast_max_premises": recast_max_premises, "length_grouped_batches": True,
                            "optimizer": "AdamW", "schedule": "linear warmup + linear decay", "grad_clip": 1.0},
    }
    if zero_shot_eval:
        from train.evaluate import default_zero_shot_suite, run_zero_shot_suite

        info["zero_shot"] = run_zero_shot_suite(output_dir, default_zero_shot_suite(data_dir), limit=zero_shot_limit)
    (output_dir / "metrics.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    write_model_card(output_dir, info)
    logger.info("wrote %s", output_dir)
    shutil.copy(output_dir / "metrics.json", work / "metrics.json")


if __name__ == "__main__":
    app()
