"""Fine-tune or distill a student classifier for a fixed label set from curated records and the teacher's scores.

The end of the pre-annotation loop: once people have validated records in Argilla (``python -m annotate
export``), a small student replaces the zero-shot teacher for that label set (N x K NLI passes become N student
passes) and is served by the same service (``POST /classify``).

Inputs: export file(s) (human labels + teacher score vectors), optionally an ``--unlabeled`` file that the
teacher scores on the fly (a running service with ``--teacher-url``, or in-process), and an ``--eval`` file
(gold labels) for the report. Objectives (``--objective``):

- ``hard``: cross-entropy on the human labels (binary cross-entropy per label for multi-label);
- ``soft``: the teacher's distribution softened by ``--temperature``, ``T^2 * KL`` (Hinton et al. 2015); for
  multi-label, per-label binary cross-entropy against the teacher's probabilities;
- ``mixed``: ``w_hard * CE(labels) + w_soft * T^2 * KL(teacher/T || student/T)``, each over the rows that have
  that target;
- ``mse``: mean squared error between the student's logits and the teacher's (Tang et al. 2019); the service
  exports probabilities, so the teacher logits are their centred logs (equal to the logits up to a per-row
  constant, which a softmax ignores).

Students (``--student``): ``transformer`` (default the packaged MiniLM encoder, or any HF encoder), ``fasttext``,
``cnn``, ``bilstm`` (:mod:`train.students`). CUDA when present (mixed precision), else CPU; a validation split
carved from the training records (``--valid-fraction``) drives early stopping; ``--seed`` makes runs repeatable.

Output directory: the model (HF format, ``id2label`` set), ``model.onnx`` and ``model.int8.onnx`` (with
``quantization.json``, so the service derives each engine's int8 graph), and ``report.{json,md}`` with PNGs:
accuracy, macro-F1, per-class F1, confusion matrix, reliability diagram, training curve, size, and speed against
the teacher on the same texts.

Example::

    python train/finetune.py --train runs/issue5/export/ag_news_reviewed.jsonl \\
        --eval ../shared/data/classification/ag_news/test.jsonl --eval-text-field title --eval-text-field description \\
        --objective mixed --student transformer --output-dir runs/student
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

if __package__ in (None, ""):  # run as ``python train/finetune.py``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import typer

from train.student_data import (
    StudentData,
    StudentDataError,
    add_teacher_scored,
    check_trainable,
    read_eval,
    read_exports,
)
from train.student_defaults import BATCH_SIZES, EPOCHS, LEARNING_RATES, describe

logger = logging.getLogger("train.finetune")
app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0], pretty_exceptions_enable=False,
                  rich_markup_mode=None)

OBJECTIVES = ("hard", "soft", "mixed", "mse")

#: Human labels per label below which a student trained on them is not worth serving. Measured by
#: ``benchmarks/student_min_reviews.py`` (reports, commands, machine: ``benchmarks/results/student_min_reviews/``,
#: ``<task>_k250.json`` and the smaller k): the default student (``--student transformer --objective hard``, this
#: command's defaults) on k random reviews a label, k in 5, 10, 25, 50, 100, 250, against the zero-shot embedding
#: teacher on 1,000 test rows. At k = 100 it scored near-uniform on AG News and emotion (mean top probability 0.33 of
#: 4 labels, 0.18 of 6; with 3 epochs of <= 51 steps the classifier barely leaves its initialisation); k = 250 was the
#: smallest tried where it beat the teacher with real scores on both (AG News 0.875 against 0.718; emotion 0.595
#: against 0.438). The true minimum lies between 100 and 250 (not measured in between).
MIN_REVIEWS_PER_LABEL = 250


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def student_loss(logits, batch: dict, *, objective: str, multi_label: bool, temperature: float, w_hard: float,
                 w_soft: float):
    """The objective's loss for one batch (see the module docstring).

    Args:
        logits: ``(B, K)`` student logits.
        batch: ``hard`` ``(B,)`` class ids with ``-1`` for none (single-label) or ``(B, K)`` multi-hot with NaN
            rows for none; ``soft`` ``(B, K)`` teacher probabilities with NaN rows for none.
    """
    import torch
    import torch.nn.functional as F

    from train.losses import binary_soft_label_loss, logit_mse_loss, soft_label_loss, soften

    zero = logits.sum() * 0.0
    hard, soft = batch["hard"], batch["soft"]
    has_soft = ~torch.isnan(soft).any(dim=1)
    has_hard = (hard >= 0) if hard.dim() == 1 else ~torch.isnan(hard).any(dim=1)

    def hard_term():
        if not has_hard.any():
            return zero
        if multi_label:
            return F.binary_cross_entropy_with_logits(logits[has_hard].float(), hard[has_hard].float())
        return F.cross_entropy(logits[has_hard].float(), hard[has_hard])

    def soft_term():
        if not has_soft.any():
            return zero
        if multi_label:
            return binary_soft_label_loss(logits[has_soft], soft[has_soft])
        return soft_label_loss(logits[has_soft], soften(soft[has_soft], temperature), temperature)

    if objective == "hard":
        return hard_term()
    if objective == "soft":
        return soft_term()
    if objective == "mixed":
        return w_hard * hard_term() + w_soft * soft_term()
    if objective == "mse":
        if not has_soft.any():
            return zero
        p = soft[has_soft].float().clamp(1e-6, 1 - 1e-6)
        target = torch.log(p) - torch.log1p(-p) if multi_label else torch.log(p) - torch.log(p).mean(1, keepdim=True)
        return logit_mse_loss(logits[has_soft], target)
    raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")


def short_labels(data: StudentData, minimum: int = MIN_REVIEWS_PER_LABEL) -> dict[str, int]:
    """``{label: human labels}`` of the labels with fewer than ``minimum`` human labels (reviews) in ``data``, in
    label order; for multi-label data a label's count is its positive labels."""
    counts = np.zeros(len(data.labels), dtype=int)
    for example in data.examples:
        if data.multi_label and example.labels is not None:
            counts += np.asarray(example.labels) > 0.5
        elif not data.multi_label and example.label is not None:
            counts[example.label] += 1
    return {label: int(n) for label, n in zip(data.labels, counts) if n < minimum}


def warn_few_reviews(data: StudentData, objective: str, minimum: int = MIN_REVIEWS_PER_LABEL) -> str | None:
    """Log one warning line (and return it) when an objective that learns from the human labels (``hard``,
    ``mixed``) gets fewer than ``minimum`` of them for any label (:data:`MIN_REVIEWS_PER_LABEL`); ``None``
    otherwise. A warning, not an error: the student is still trained and written."""
    if objective not in ("hard", "mixed"):
        return None
    short = short_labels(data, minimum)
    if not short:
        return None
    named = ", ".join(f"{label!r} has {n}" for label, n in short.items())
    line = (f"few reviews: {named} (minimum {minimum} a label): students trained on fewer reviews per label did not "
            f"beat the zero-shot teacher (benchmarks/student_min_reviews.py); review more before serving this "
            f"student, or add soft labels (--unlabeled, --teacher-head)")
    logger.warning("%s", line)
    return line


def encode_texts(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each text (truncated to ``max_length``, special tokens included, no padding), in one call of the
    fast tokenizer: training tokenizes its data once, not once an epoch."""
    if not texts:
        return []
    return tokenizer(list(texts), truncation=True, max_length=max_length, padding=False,
                     return_attention_mask=False, return_token_type_ids=False)["input_ids"]


def make_batches(data: StudentData, tokenizer, *, batch_size: int, max_length: int, seed: int | None,
                 encoded: list[list[int]] | None = None):
    """Tokenized batches as tensors: ``input_ids``, ``attention_mask`` (padded to the batch's longest text),
    ``hard``, ``soft`` (see :func:`student_loss`). Shuffled with ``seed`` (``None``: in order). ``encoded``: the
    examples' token ids from :func:`encode_texts` (tokenized here when ``None``)."""
    import torch

    if encoded is None:
        encoded = encode_texts(tokenizer, [e.text for e in data.examples], max_length)
    pad = tokenizer.pad_token_id or 0
    order = list(range(len(data.examples)))
    if seed is not None:
        random.Random(seed).shuffle(order)
    k = len(data.labels)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        chunk = [data.examples[i] for i in rows]
        width = max(len(encoded[i]) for i in rows)
        ids = np.full((len(rows), width), pad, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for j, i in enumerate(rows):
            ids[j, :len(encoded[i])] = encoded[i]
            mask[j, :len(encoded[i])] = 1
        if data.multi_label:
            hard = torch.tensor(np.stack([e.labels if e.labels is not None else np.full(k, np.nan) for e in chunk]),
                                dtype=torch.float32)
        else:
            hard = torch.tensor([e.label if e.label is not None else -1 for e in chunk], dtype=torch.long)
        soft = torch.tensor(np.stack([e.soft if e.soft is not None else np.full(k, np.nan) for e in chunk]),
                            dtype=torch.float32)
        yield {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask), "hard": hard,
               "soft": soft}


def train_student(model, train: StudentData, valid: StudentData, tokenizer, *, objective: str, device, epochs: float,
                  batch_size: int, lr: float, weight_decay: float, warmup_ratio: float, max_length: int,
                  temperature: float, w_hard: float, w_soft: float, patience: int, seed: int,
                  eval_every: int | None = None, max_steps: int | None = None) -> dict:
    """Train with linear warmup and decay, evaluating the objective on ``valid`` every ``eval_every`` steps
    (default: once per epoch) and keeping the best weights (early stopping after ``patience`` evaluations
    without improvement). Returns the history: train loss curve, validation loss curve, initial losses, steps.

    Dense weights take AdamW (gradients clipped to norm 1); sparse embedding tables (the tiny students',
    :mod:`train.students`) take ``torch.optim.SparseAdam``, which keeps moments and updates only for the rows a batch
    touched (fastText's sparse updates, Joulin et al. 2016): a step costs the batch, not the table. (Plain sparse
    SGD, fastText's own optimizer, is 4x cheaper a step but was 0.6-8 points less accurate at every learning rate
    tried, 1-10, on the dev tasks' tune halves.)
    """
    import torch
    from tqdm.auto import tqdm

    loss_args = dict(objective=objective, multi_label=train.multi_label, temperature=temperature, w_hard=w_hard,
                     w_soft=w_soft)
    steps_per_epoch = math.ceil(len(train.examples) / batch_size)
    total = max(1, int(round(steps_per_epoch * epochs)))
    if max_steps is not None:
        total = min(total, max_steps)
    eval_every = eval_every or steps_per_epoch
    model.to(device)
    sparse_ids = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.sparse}
    dense = [p for p in model.parameters() if p.requires_grad and id(p) not in sparse_ids]
    sparse = [p for p in model.parameters() if p.requires_grad and id(p) in sparse_ids]
    optimizers = [torch.optim.AdamW(dense, lr=lr, weight_decay=weight_decay)]
    if sparse:
        optimizers.append(torch.optim.SparseAdam(sparse, lr=lr))
    warmup = int(warmup_ratio * total)

    def schedule(step: int) -> float:  # linear warmup, then linear decay to 0 (transformers' linear schedule)
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, schedule) for o in optimizers]
    train_ids = encode_texts(tokenizer, [e.text for e in train.examples], max_length)  # once, not each epoch
    valid_ids = encode_texts(tokenizer, [e.text for e in valid.examples], max_length)
    use_amp = device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    def evaluate() -> float:
        if not valid.examples:
            return float("nan")
        model.eval()
        losses, weights = [], []
        with torch.inference_mode():
            for batch in make_batches(valid, tokenizer, batch_size=128, max_length=max_length, seed=None,
                                      encoded=valid_ids):
                batch = {k: v.to(device) for k, v in batch.items()}
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    logits = model(batch["input_ids"], batch["attention_mask"])
                losses.append(float(student_loss(logits.float(), batch, **loss_args)))
                weights.append(len(batch["input_ids"]))
        model.train()
        return float(np.average(losses, weights=weights))

    history = {"train_loss": [], "valid_loss": [], "steps": total, "steps_per_epoch": steps_per_epoch,
               "sparse_parameters": int(sum(p.numel() for p in sparse))}
    history["initial_valid_loss"] = evaluate()
    best, best_state, bad, step = history["initial_valid_loss"], None, 0, 0
    model.train()
    bar = tqdm(total=total, desc=f"train ({objective})", unit="step")
    epoch, stop, running = 0, False, []
    began = time.perf_counter()
    while step < total and not stop:
        for batch in make_batches(train, tokenizer, batch_size=batch_size, max_length=max_length, seed=seed + epoch,
                                  encoded=train_ids):
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                logits = model(batch["input_ids"], batch["attention_mask"])
            loss = student_loss(logits.float(), batch, **loss_args)
            if step == 0:
                history["initial_train_loss"] = loss.item()
            scaler.scale(loss).backward()
            for optimizer in optimizers:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(dense, 1.0)  # norms of sparse gradients are not defined on CPU
            for optimizer in optimizers:
                scaler.step(optimizer)
            scaler.update()
            for scheduler, optimizer in zip(schedulers, optimizers):
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            running.append(loss.item())
            step += 1
            bar.update(1)
            if len(running) >= 10:
                history["train_loss"].append((step, float(np.mean(running))))
                bar.set_postfix(loss=f"{np.mean(running):.4f}")
                running = []
            if step % eval_every == 0 or step == total:
                current = evaluate()
                history["valid_loss"].append((step, current))
                if math.isnan(current) or current < best - 1e-4:
                    best, best_state, bad = current, copy.deepcopy(model.state_dict()), 0
                else:
                    bad += 1
                    if bad >= patience:
                        logger.info("early stop at step %d: validation loss %.4f, best %.4f", step, current, best)
                        stop = True
                        break
            if step >= total:
                break
        epoch += 1
    bar.close()
    if running:
        history["train_loss"].append((step, float(np.mean(running))))
    history.update(steps_done=step, epochs_done=round(step / steps_per_epoch, 2), best_valid_loss=best,
                   seconds=round(time.perf_counter() - began, 1), early_stopped=stop)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@app.command()
def main(
    train: Annotated[Optional[list[Path]], typer.Option("--train", help="Export file(s) of python -m annotate export "
                                                        "(.jsonl, .parquet or a datasets folder); repeatable.")] = None,
    unlabeled: Annotated[Optional[Path], typer.Option(help="Texts for the teacher to score (soft labels only): "
                                                      ".txt/.csv/.jsonl/.parquet.")] = None,
    text_column: Annotated[str, typer.Option(help="Text column of --unlabeled.")] = "text",
    labels: Annotated[Optional[list[str]], typer.Option("--label", help="Label set when there is no export "
                                                        "(repeatable, in order).")] = None,
    eval_file: Annotated[Optional[Path], typer.Option("--eval", help="Held-out JSONL with gold labels for the report.")] = None,
    eval_text_field: Annotated[Optional[list[str]], typer.Option(help="Text field(s) of --eval, joined by a space "
                                                                 "(default: text).")] = None,
    eval_limit: Annotated[Optional[int], typer.Option(help="First N rows of --eval.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Use the first N records of the exports (after merging).")] = None,
    humans_only: Annotated[bool, typer.Option("--humans-only", help="Train on human labels only: skip export rows "
                                              "accepted in bulk (source auto-accept).")] = False,
    unlabeled_limit: Annotated[Optional[int], typer.Option(help="First N texts of --unlabeled.")] = None,
    objective: Annotated[str, typer.Option(help="hard, soft, mixed or mse.")] = "mixed",
    student: Annotated[str, typer.Option(help="transformer, fasttext, cnn or bilstm (tiny students by default: "
                                          f"{describe()}; sizes and times in docs/students.md).")] = "transformer",
    base_model: Annotated[str, typer.Option(help="Encoder to start from (transformer student) or whose vocabulary and "
                                            "embeddings the tiny students use: packaged:all-MiniLM-L6-v2, a "
                                            "directory or a hub id.")] = "packaged:all-MiniLM-L6-v2",
    teacher_url: Annotated[Optional[str], typer.Option(help="Running zero-shot service for --unlabeled and the "
                                                       "speed comparison (else in-process).")] = None,
    teacher_model: Annotated[str, typer.Option(help="In-process teacher: NLI model id.")] = "default",
    teacher_method: Annotated[Optional[str], typer.Option(help="Teacher method: nli, embedding, ensemble (default: "
                                                          "the service's policy).")] = None,
    teacher_engine: Annotated[str, typer.Option(help="In-process teacher engine.")] = "auto",
    hypothesis_template: Annotated[str, typer.Option(help="Teacher's hypothesis template.")] = "This text is about {}.",
    multi_label: Annotated[Optional[bool], typer.Option(help="Label mode when there is no export to say it.")] = None,
    temperature: Annotated[float, typer.Option(min=0.05, help="Softening temperature of the soft labels.")] = 2.0,
    w_hard: Annotated[float, typer.Option(help="Weight of the hard-label loss (mixed).")] = 0.5,
    w_soft: Annotated[float, typer.Option(help="Weight of the soft-label loss (mixed).")] = 0.5,
    epochs: Annotated[Optional[float], typer.Option(min=0.01, help="Passes over the training data (default: per "
                                                    "student, see --student).")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many steps.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Examples a step (default: per student, see "
                                                      "--student).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (default: per student, see --student).")] = None,
    weight_decay: float = 0.01,
    warmup_ratio: float = 0.06,
    max_length: Annotated[int, typer.Option(help="Tokens per text.")] = 128,
    valid_fraction: Annotated[float, typer.Option(min=0.0, max=0.5, help="Training records held out for early stopping.")] = 0.1,
    patience: Annotated[int, typer.Option(min=1, help="Evaluations without improvement before stopping.")] = 2,
    eval_every: Annotated[Optional[int], typer.Option(help="Steps between validations (default: each epoch).")] = None,
    seed: int = 13,
    device: Annotated[str, typer.Option(help="auto (CUDA if present), cpu, cuda ...")] = "auto",
    speed_texts: Annotated[int, typer.Option(help="Eval texts timed for the speed comparison with the teacher.")] = 1000,
    compare_method: Annotated[Optional[list[str]], typer.Option(help="Also time these teacher methods (nli, embedding, "
                                                                "ensemble) in the speed comparison; repeatable.")] = None,
    teacher_head: Annotated[Optional[Path], typer.Option(help="Adapted head directory (python -m annotate adapt / "
                                                         "refresh) as the soft-label teacher: it scores every training "
                                                         "text (exports, --unlabeled, augmented copies) with one "
                                                         "encoder pass each, replacing exported teacher scores.")] = None,
    teacher_embeddings: Annotated[Optional[list[Path]], typer.Option(help="Scored-pool folder(s) (annotate's cache, "
                                                                     "PoolStore) whose stored embeddings the head "
                                                                     "reuses instead of embedding those texts again; "
                                                                     "repeatable.")] = None,
    augment: Annotated[int, typer.Option(min=0, help="Augmented copies per training text (Tang et al. 2019: masking, "
                                         "embedding-neighbour replacement, n-gram sampling), labelled by the teacher; "
                                         "0: none.")] = 0,
    student_config: Annotated[Optional[str], typer.Option(help="JSON hyperparameters of a tiny student overriding "
                                                          "its defaults key by key, e.g. '{\"dim\": 32, \"buckets\": "
                                                          "32768}' (fasttext).")] = None,
    output_dir: Annotated[Path, typer.Option(help="Model directory, ONNX files and report.")] = Path("runs/student"),
) -> None:
    """Train a student, export it, and write its report (accuracy, calibration, size, speed against the teacher)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if objective not in OBJECTIVES:
        _fail(f"--objective must be one of {', '.join(OBJECTIVES)}, not {objective!r}")
    for method in [teacher_method, *(compare_method or [])]:
        if method not in (None, "auto", "nli", "embedding", "ensemble"):
            _fail(f"teacher method must be nli, embedding, ensemble or auto, not {method!r}")
    from train.students import STUDENTS

    if student not in STUDENTS:
        _fail(f"--student must be one of {', '.join(STUDENTS)}, not {student!r}")
    if not train and not unlabeled:
        _fail("give --train export file(s) and/or --unlabeled texts for the teacher")
    hyperparameters = _student_config(student_config, student)
    head = _head_teacher(teacher_head, teacher_embeddings, teacher_url, teacher_model, teacher_engine)
    if head is not None:
        if multi_label:
            _fail("--teacher-head: the adapted head is single-label; drop --multi-label")
        labels = labels or (None if train else head.labels)
    try:
        if train:
            data = read_exports(train, humans_only=humans_only)
            if labels and list(labels) != data.labels:
                _fail(f"--label {list(labels)} differs from the exports' labels {data.labels}")
        else:
            if not labels or len(labels) < 2:
                _fail("without --train, give the label set with --label (at least two)")
            data = StudentData(list(labels), bool(multi_label), [])
        if limit is not None:
            data.examples = data.examples[:limit]
        eval_set = None
        if eval_file is not None:
            eval_set = read_eval(eval_file, data.labels, data.multi_label, tuple(eval_text_field or ["text"]),
                                 eval_limit)
    except StudentDataError as exc:
        _fail(str(exc))
    teacher_info: dict = {}
    if head is not None:
        if data.multi_label:
            _fail("--teacher-head: the adapted head is single-label, the exports are multi-label")
        try:
            head.label_order(data.labels)
        except ValueError as exc:
            _fail(str(exc))
    if unlabeled is not None:
        from pool.readers import InputError, iter_rows

        try:
            texts = [row.text for row in iter_rows(unlabeled, text_column) if row.text][:unlabeled_limit]
        except InputError as exc:
            _fail(str(exc))
        if not texts:
            _fail(f"--unlabeled {unlabeled} holds no texts")
        if head is not None:
            added = add_teacher_scored(data, texts, np.full((len(texts), len(data.labels)), np.nan))
            for example in data.examples:  # the head scores them below, with the exported records
                if example.soft is not None and np.isnan(example.soft).all():
                    example.soft = None
            teacher_info = {"unlabeled_texts": len(texts), "added": added}
        else:
            from pool.scorers import teacher_scores

            logger.info("teacher scoring %d unlabeled texts", len(texts))
            scores, agent, seconds = teacher_scores(texts, data.labels, template=hypothesis_template,
                                                    multi_label=data.multi_label, url=teacher_url, model=teacher_model,
                                                    method=teacher_method, engine=teacher_engine)
            added = add_teacher_scored(data, texts, scores)
            teacher_info = {"agent": agent, "unlabeled_texts": len(texts), "added": added,
                            "seconds": round(seconds, 1)}
    if head is not None:
        teacher_info.update(_score_with_head(head, data.examples, data.labels))
        if teacher_method is None:
            teacher_method = "embedding"  # the head's cost: one encoder pass a text, timed as the embedding method
        hypothesis_template = head.head.meta.get("hypothesis_template", hypothesis_template)
    try:
        check_trainable(data, objective)
    except StudentDataError as exc:
        _fail(str(exc))
    warn_few_reviews(data, objective)

    from service.allocator import set_mmap_threshold
    from service.config import Settings as ServiceSettings

    # as the service does: large freed buffers (teacher scores, tokenized batches, ONNX sessions) leave the process
    set_mmap_threshold(ServiceSettings().malloc_mmap_threshold_kib)

    import torch
    from transformers import AutoTokenizer

    from service.sources import resolve_model
    from train.students import build_student

    seed_everything(seed)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    if dev.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    try:
        base = resolve_model(base_model).path
    except Exception as exc:
        _fail(f"--base-model: {exc}")
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = build_student(student, labels=data.labels, multi_label=data.multi_label, base_dir=base,
                          hyperparameters=hyperparameters)
    train_split, valid_split = data.split(valid_fraction, seed)
    if augment:
        teacher_info["augmentation"] = _augment(train_split, base, augment, seed, head, dict(
            template=hypothesis_template, multi_label=data.multi_label, url=teacher_url, model=teacher_model,
            method=teacher_method, engine=teacher_engine))
    if head is not None:
        head.close()
    logger.info("data: %s; train %d, validation %d; student %s on %s", data.counts(), len(train_split.examples),
                len(valid_split.examples), student, dev)
    history = train_student(model, train_split, valid_split, tokenizer, objective=objective, device=dev,
                            epochs=epochs or EPOCHS[student], batch_size=batch_size or BATCH_SIZES[student],
                            lr=lr or LEARNING_RATES[student],
                            weight_decay=weight_decay, warmup_ratio=warmup_ratio, max_length=max_length,
                            temperature=temperature, w_hard=w_hard, w_soft=w_soft, patience=patience, seed=seed,
                            eval_every=eval_every, max_steps=max_steps)
    from train.student_report import write_outputs

    run = {"command": "python train/finetune.py " + " ".join(sys.argv[1:]), "student": student, "objective": objective,
           "base_model": base_model, "device": str(dev), "data": data.counts(), "labels": data.labels,
           "multi_label": data.multi_label, "teacher": teacher_info, "history": history,
           "hyperparameters": {"epochs": epochs or EPOCHS[student], "batch_size": batch_size or BATCH_SIZES[student],
                               "lr": lr or LEARNING_RATES[student], "temperature": temperature,
                               "w_hard": w_hard, "w_soft": w_soft, "max_length": max_length, "seed": seed,
                               "valid_fraction": valid_fraction, "patience": patience, "augment": augment,
                               "student": getattr(model, "student_hyperparameters", hyperparameters)}}
    write_outputs(model, tokenizer, output_dir, run, eval_set=eval_set, max_length=max_length,
                  teacher=dict(url=teacher_url, model=teacher_model, method=teacher_method, engine=teacher_engine,
                               template=hypothesis_template, compare_methods=compare_method or []),
                  speed_texts=speed_texts,
                  calibration_texts=[e.text for e in train_split.examples[:256]])
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    typer.echo(f"wrote {output_dir} (report: {output_dir / 'report.md'}); peak resident memory {peak:.0f} MiB")


def _student_config(text: str | None, student: str) -> dict:
    """``--student-config`` as a dict (exit 2 on bad JSON or for the transformer student)."""
    if not text:
        return {}
    import json

    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        _fail(f"--student-config is not valid JSON: {exc.msg}")
    if not isinstance(config, dict):
        _fail("--student-config must be a JSON object")
    if student == "transformer":
        _fail("--student-config applies to the tiny students (fasttext, cnn, bilstm)")
    import inspect

    from train.students import _TINY

    accepted = set(inspect.signature(_TINY[student].__init__).parameters) - {"self", "vocab_size", "num_labels"}
    unknown = sorted(set(config) - accepted)
    if unknown:
        _fail(f"--student-config: {student} has no option {unknown[0]!r}; it takes {', '.join(sorted(accepted))}")
    return config


def _head_teacher(directory: Path | None, stores, url, model, engine):
    """The :class:`train.head_teacher.HeadTeacher` of ``--teacher-head`` (exit 2 when it is not a head)."""
    if directory is None:
        if stores:
            _fail("--teacher-embeddings needs --teacher-head")
        return None
    from train.head_teacher import HeadTeacher, HeadTeacherError

    try:
        return HeadTeacher(directory, url=url, model=model, engine="onnxruntime" if engine == "auto" else engine,
                           embedding_stores=stores or ())
    except HeadTeacherError as exc:
        _fail(f"--teacher-head: {exc}")


def _score_with_head(head, examples, labels) -> dict:
    """Give every example the head's probabilities as its soft label (human labels untouched)."""
    from pool.scorers import ScoringError
    from train.head_teacher import HeadTeacherError

    if not examples:
        return {"agent": head.agent}
    logger.info("teacher head %s scoring %d texts", head.head.revision, len(examples))
    try:
        scores = head.scores([e.text for e in examples], labels)
    except (HeadTeacherError, ScoringError) as exc:
        _fail(f"--teacher-head: {exc}")
    for example, row in zip(examples, scores):
        example.soft = row
    return {"agent": head.agent, "head": str(head.directory), "head_revision": head.head.revision,
            "head_mode": head.head.meta.get("mode"), "scored_texts": len(examples),
            "encoder_passes": head.encoder_passes, "stored_embeddings_used": head.cached_texts,
            "seconds": round(head.seconds, 2)}


def _augment(train_split: StudentData, base: Path, copies: int, seed: int, head, teacher: dict) -> dict:
    """Add ``copies`` augmented versions of each training text (validation untouched), labelled by the teacher
    (the head, else the zero-shot teacher); returns counts and seconds."""
    from pool.scorers import teacher_scores
    from train.augment import Augmenter, augment_examples

    began = time.perf_counter()
    augmenter = Augmenter.from_encoder(base)
    new, stats = augment_examples(train_split.examples, augmenter, copies, seed)
    texts = [e.text for e in new]
    if head is not None:
        encoder_passes, seconds = head.encoder_passes, head.seconds
        scores = head.scores(texts, train_split.labels) if texts else np.empty((0, len(train_split.labels)))
        label_seconds, passes = head.seconds - seconds, head.encoder_passes - encoder_passes
    else:
        scores, _, label_seconds = teacher_scores(texts, train_split.labels, **teacher) if texts else (None, "", 0.0)
        passes = len(texts) * len(train_split.labels)
    for example, row in zip(new, scores if texts else []):
        example.soft = row
    train_split.examples.extend(new)
    result = {**stats.to_dict(), "teacher_label_seconds": round(label_seconds, 2), "teacher_passes": passes,
              "total_seconds": round(time.perf_counter() - began, 2)}
    logger.info("augmented: %s", result)
    return result


if __name__ == "__main__":
    app()
