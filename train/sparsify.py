"""Prune and int8-quantize the NLI teacher: gradual magnitude pruning with distillation, then static/dynamic int8.

1. **Prune** the encoder's Linear weights to ``--sparsity`` (unstructured, magnitude) on Zhu & Gupta's cubic
   schedule (:mod:`train.pruning`), while training on the teacher's NLI mix with the hard labels and knowledge
   distillation from the dense teacher's logits (Prune Once for All, Zafrir et al. 2021; oBERT, Kurtic et al.
   2022). Masks stay fixed once the target is reached; the rest of the run recovers accuracy. The word
   embeddings are frozen, so the pruned model shares them with the dense one and ships in a few MB
   (:mod:`service.sparse_checkpoint`).
2. **Quantize**: calibrate activation ranges on NLI pairs and store them (``quantization.json``); the service
   builds a static QDQ int8 graph for DeepSparse and, for ONNX Runtime, whichever of dynamic / static int8 ran
   fastest here (:mod:`service.quantization`, measured by this command).
3. **Evaluate** the dense teacher and every variant (sparse fp32, sparse int8 on each engine) in one run on
   MNLI dev-matched and AG News zero-shot, and write the card (``README.md``) and ``metrics.json``.

Resumable: checkpoints live in ``--work-dir``; running the same command again continues where it stopped.

Example::

    python -m train.sparsify --sparsity 0.5 --prune-end 0.5 --output-dir service/models/nli-minilm-l6-pruned50
"""

from __future__ import annotations

import logging
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import torch
import typer
from tqdm.auto import tqdm

from service.sources import DENSE_MODEL, default_cache_dir, resolve_model
from train.build_teacher import (
    _atomic_save,
    build_training_set,
    fail,
    length_grouped_batches,
    partial_label_loss,
    pick_device,
)
from train.losses import distillation_loss
from train.nli_data import ALLOWED_CLASSES, NLIPair
from train.pruning import MagnitudePruner, PruningSchedule

logger = logging.getLogger("train.sparsify")
app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0], rich_markup_mode=None)

CHECKPOINT = "checkpoint.pt"


def teacher_logits(pairs: list[NLIPair], teacher_dir: Path, work_dir: Path, *, max_length: int,
                   cache_dir: Path) -> np.ndarray:
    """The dense teacher's NLI logits for every training pair, ``(len(pairs), 3)`` float32.

    Computed once with ONNX Runtime through the service's own scoring code (same tokenization as training:
    premise-only truncation at ``max_length``) and cached as ``teacher_logits.npy`` in ``work_dir``.
    """
    cache = work_dir / "teacher_logits.npy"
    if cache.is_file():
        logits = np.load(cache)
        if logits.shape[0] == len(pairs):
            return logits
        logger.warning("cached teacher logits have %d rows for %d pairs: recomputing", logits.shape[0], len(pairs))
    from transformers import AutoTokenizer

    from service.engines.onnxruntime import OnnxRuntimeEngine
    from service.onnx_export import onnx_for
    from service.sources import resolve_model as resolve
    from service.zeroshot import ZeroShotClassifier

    source = resolve(str(teacher_dir))
    engine = OnnxRuntimeEngine(onnx_for(source, cache_dir))
    classifier = ZeroShotClassifier(AutoTokenizer.from_pretrained(source.path), engine, source.config()["label2id"],
                                    max_length=max_length, batch_size=64)
    chunk = 2048
    out = []
    for start in tqdm(range(0, len(pairs), chunk), desc="teacher logits", unit="chunk"):
        part = pairs[start:start + chunk]
        out.append(classifier.logits([p.premise for p in part], [p.hypothesis for p in part]))
    logits = np.concatenate(out).astype(np.float32)
    np.save(work_dir / "teacher_logits.tmp.npy", logits)
    os.replace(work_dir / "teacher_logits.tmp.npy", cache)
    return logits


def train_pruned(model, tokenizer, pairs: list[NLIPair], soft: np.ndarray, work_dir: Path, *,
                 device: torch.device, sparsity: float, scope: str, epochs: float, batch_size: int, lr: float,
                 warmup_ratio: float, weight_decay: float, max_length: int, seed: int, prune_end: float,
                 update_every: int, hard_weight: float, kd_weight: float, temperature: float,
                 checkpoint_every: int, time_budget_s: float) -> dict:
    """Prune on the cubic schedule and recover with hard labels + distillation; resumable from ``work_dir``.

    Returns:
        run statistics: steps, pairs seen, seconds, loss curve, sparsity curve, measured sparsity.
    """
    from transformers import get_linear_schedule_with_warmup

    lengths = [len(p.premise) + len(p.hypothesis) for p in pairs]
    n_epochs = max(1, math.ceil(epochs))
    order = [b for e in range(n_epochs) for b in length_grouped_batches(lengths, batch_size, seed + e)]
    total_steps = int(len(order) * epochs / n_epochs)
    order = order[:total_steps]
    schedule = PruningSchedule(final_sparsity=sparsity, start_step=0, end_step=int(prune_end * total_steps),
                               update_every=update_every, scope=scope)
    model.get_input_embeddings().weight.requires_grad_(False)  # shared with the dense model (module docstring)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    no_decay = ("bias", "LayerNorm.weight", "layer_norm")
    groups = [{"params": [p for n, p in trainable if not any(k in n for k in no_decay)], "weight_decay": weight_decay},
              {"params": [p for n, p in trainable if any(k in n for k in no_decay)], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * total_steps), total_steps)
    pruner = MagnitudePruner(model, schedule)
    state = {"step": 0, "seconds": 0.0, "pairs_seen": 0, "loss_curve": [], "sparsity_curve": [],
             "stopped_by_budget": False, "total_steps": total_steps}
    ckpt = work_dir / CHECKPOINT
    if ckpt.is_file():
        saved = torch.load(ckpt, map_location=device, weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        pruner.load_state_dict(saved["pruner"])
        state = saved["state"]
        torch.set_rng_state(saved["torch_rng"])
        logger.info("resumed from %s at step %d/%d (%.0f s trained)", ckpt, state["step"], total_steps, state["seconds"])

    def save() -> None:
        _atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "pruner": pruner.state_dict(), "state": state,
                      "torch_rng": torch.get_rng_state()}, ckpt)

    if state["step"] < total_steps:
        allowed_table = torch.zeros(len(ALLOWED_CLASSES), 3, dtype=torch.bool)
        label_index = {label: i for i, label in enumerate(ALLOWED_CLASSES)}
        for label, i in label_index.items():
            allowed_table[i, list(ALLOWED_CLASSES[label])] = True
        soft_t = torch.from_numpy(soft)
        use_amp = device.type == "cuda"
        model.train()
        start, running = time.monotonic() - state["seconds"], []
        bar = tqdm(total=total_steps, initial=state["step"], desc=f"prune to {sparsity:.0%}", unit="step")
        for step in range(state["step"], total_steps):
            target = pruner.update(step)
            if target is not None:
                state["sparsity_curve"].append((step, round(target, 4)))
            idx = order[step]
            batch = [pairs[i] for i in idx]
            enc = tokenizer([p.premise for p in batch], [p.hypothesis for p in batch], padding=True,
                            truncation="only_first", max_length=max_length, return_tensors="pt").to(device)
            allowed = allowed_table[[label_index[p.label] for p in batch]].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = model(**enc).logits
            loss = (hard_weight * partial_label_loss(logits, allowed)
                    + kd_weight * distillation_loss(logits, soft_t[idx].to(device), temperature))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            pruner.apply()
            running.append(loss.item())
            state["step"], state["pairs_seen"] = step + 1, state["pairs_seen"] + len(batch)
            state["seconds"] = time.monotonic() - start
            bar.update(1)
            if len(running) == 50:
                state["loss_curve"].append((state["step"], float(np.mean(running))))
                bar.set_postfix(loss=f"{np.mean(running):.3f}", sparsity=f"{pruner.current:.2f}",
                                pairs_per_s=f"{state['pairs_seen'] / state['seconds']:.1f}")
                running = []
            if state["step"] % checkpoint_every == 0:
                save()
            if state["seconds"] > time_budget_s:
                logger.warning("time budget reached at step %d/%d: stopping early", state["step"], total_steps)
                state["stopped_by_budget"] = True
                break
        bar.close()
        if pruner.current < sparsity:  # stopped before the schedule ended: reach the target anyway
            pruner.schedule = PruningSchedule(final_sparsity=sparsity, start_step=0, end_step=0, scope=scope)
            pruner.update(0)
            logger.warning("pruned to the final %.0f%% without recovery steps (run stopped early)", 100 * sparsity)
        save()
    state["measured_sparsity"] = pruner.sparsity()["all"]
    return state


@app.command()
def main(
    output_dir: Annotated[Path, typer.Option(help="Compact model directory to write (sparse weights, card, metrics).")] = Path("runs/nli-minilm-l6-pruned"),
    teacher: Annotated[str, typer.Option(help="Dense teacher to prune and distil from: a model id of the service "
                                         "(dense = the embedded dense teacher) or a directory.")] = DENSE_MODEL,
    data_dir: Annotated[Path, typer.Option(help="The shared data folder (holds nli/ and classification/).")] = Path("../shared/data"),
    work_dir: Annotated[Optional[Path], typer.Option(help="Checkpoints, cached pairs and teacher logits; rerun to resume. Default: <cache>/sparsify/<output-dir name>")] = None,
    sparsity: Annotated[float, typer.Option(min=0.0, max=0.99, help="Target fraction of zeros in the encoder's Linear weights.")] = 0.8,
    scope: Annotated[str, typer.Option(help="layer (same sparsity in every layer, as Zhu & Gupta) or global.")] = "layer",
    epochs: Annotated[float, typer.Option(min=0.01, help="Passes over the NLI mix, pruning and recovery together.")] = 1.0,
    prune_end: Annotated[float, typer.Option(min=0.0, max=1.0, help="Fraction of the run after which masks stay fixed.")] = 0.6,
    update_every: Annotated[int, typer.Option(min=1, help="Steps between mask updates.")] = 25,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, linear warmup and decay).")] = 5e-5,
    warmup_ratio: float = 0.03,
    weight_decay: float = 0.01,
    hard_weight: Annotated[float, typer.Option(help="Weight of the hard-label loss.")] = 0.5,
    kd_weight: Annotated[float, typer.Option(help="Weight of the distillation loss (T^2-scaled KL to the teacher).")] = 1.0,
    temperature: Annotated[float, typer.Option(min=0.1, help="Distillation temperature.")] = 2.0,
    max_length: Annotated[int, typer.Option(help="Max tokens per pair in training.")] = 128,
    seed: int = 13,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 100,
    time_budget_minutes: Annotated[float, typer.Option(help="Stop training (then quantize, evaluate, save) after this long.")] = 90.0,
    device: Annotated[str, typer.Option(help="auto (CUDA if present), cpu, cuda ...")] = "auto",
    calibration_pairs: Annotated[int, typer.Option(min=16, help="NLI pairs for the int8 activation ranges.")] = 512,
    evaluate: Annotated[bool, typer.Option(help="Evaluate dense and sparse variants on MNLI-m and AG News.")] = True,
    eval_limit: Annotated[Optional[int], typer.Option(help="First N pairs / texts of each evaluation set.")] = None,
) -> None:
    """Prune, quantize and evaluate (resumable: run the same command again to continue)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if scope not in ("layer", "global"):
        fail("--scope must be layer or global")
    nli_train, nli_eval = data_dir / "nli" / "train", data_dir / "nli" / "eval"
    if not nli_train.is_dir():
        fail(f"--data-dir: {nli_train} not found; point --data-dir at the shared data folder (holds nli/)")
    try:
        dense = resolve_model(teacher)
    except Exception as exc:
        fail(f"--teacher: {exc}")
    if not (dense.path / "model.safetensors").is_file():
        fail(f"--teacher: {dense.path} has no model.safetensors to prune")
    torch.manual_seed(seed)
    dev = pick_device(device)
    if dev.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    cache_dir = default_cache_dir()
    work = Path(work_dir or cache_dir / "sparsify" / output_dir.name)
    work.mkdir(parents=True, exist_ok=True)
    command = "python -m train.sparsify " + " ".join(sys.argv[1:])

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    pairs = build_training_set(nli_train, nli_eval, work, seed=seed, recast=True, recast_max_premises=16000, device=dev)
    logger.info("training pairs: %d", len(pairs))
    soft = teacher_logits(pairs, dense.path, work, max_length=max_length, cache_dir=cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(dense.path)
    model = AutoModelForSequenceClassification.from_pretrained(dense.path, torch_dtype=torch.float32,
                                                               attn_implementation="eager").to(dev)
    stats = train_pruned(model, tokenizer, pairs, soft, work, device=dev, sparsity=sparsity, scope=scope,
                         epochs=epochs, batch_size=batch_size, lr=lr, warmup_ratio=warmup_ratio,
                         weight_decay=weight_decay, max_length=max_length, seed=seed, prune_end=prune_end,
                         update_every=update_every, hard_weight=hard_weight, kd_weight=kd_weight,
                         temperature=temperature, checkpoint_every=checkpoint_every,
                         time_budget_s=time_budget_minutes * 60)
    logger.info("training done: %d steps, measured sparsity %.4f", stats["step"], stats["measured_sparsity"])

    from service.sparse_checkpoint import save_compact

    model = model.to("cpu").eval()
    storage = save_compact({k: v.detach().numpy() for k, v in model.state_dict().items()}, output_dir,
                           base_dir=dense.path)
    model.config.architectures = ["BertForSequenceClassification"] if model.config.model_type == "bert" \
        else model.config.architectures
    model.config.save_pretrained(output_dir)  # the tokenizer is the base's (service.sparse_checkpoint.materialize)
    logger.info("wrote %s (%.1f MB stored; %.1f MB as dense fp16; shared with the base: %s)", output_dir,
                storage["stored_bytes"] / 1e6, storage["dense_bytes"] / 1e6, ", ".join(storage["shared"]))

    from train.sparse_report import finalize

    info = {
        "name": output_dir.name, "teacher": teacher, "teacher_path": str(dense.path), "command": command,
        "device": f"{dev.type} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else platform.processor() or 'cpu'}, "
                  f"{torch.get_num_threads()} threads)",
        "train": {k: v for k, v in stats.items()}, "storage": storage,
        "hyperparameters": {"sparsity": sparsity, "scope": scope, "schedule": "cubic (Zhu & Gupta 2017)",
                            "prune_end": prune_end, "update_every": update_every, "epochs": epochs,
                            "batch_size": batch_size, "lr": lr, "warmup_ratio": warmup_ratio,
                            "weight_decay": weight_decay, "hard_weight": hard_weight, "kd_weight": kd_weight,
                            "temperature": temperature, "max_length": max_length, "seed": seed,
                            "frozen": ["word embeddings (shared with the dense teacher)"],
                            "pruned": "encoder.layer.*.{attention.self.query,key,value; attention.output.dense; "
                                      "intermediate.dense; output.dense} weights"},
    }
    finalize(output_dir, dense, info, data_dir=data_dir, work_dir=work, cache_dir=cache_dir,
             calibration_pairs=calibration_pairs, evaluate=evaluate, eval_limit=eval_limit, seed=seed)


if __name__ == "__main__":
    app()
