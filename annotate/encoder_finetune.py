"""Fine-tune the sentence encoder itself on the reviewed records: the background alternative to the frozen head.

The adapted head (:mod:`annotate.adaptive`) is a logistic regression on frozen embeddings; it refits in
seconds but plateaus. Once enough reviews exist, :func:`finetune_on_reviews` trains the encoder on them, and the
caller serves the result in place of the head when its accuracy on held-out reviewed records is higher.

Recipes (``recipe``):

- ``lpft`` (default): the served encoder (all-MiniLM-L6-v2, mean pooling, unit-length embeddings, exactly the
  features the head reads) with a linear layer on top, first fitted as a logistic regression on the frozen
  embeddings of the training reviews ("linear probe"), then the whole network fine-tuned with cross-entropy
  ("LP-FT": Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features and Underperform
  Out-of-Distribution", ICLR). Training starts where the frozen head already is, so a short, time-bounded run
  on a CPU moves from that point instead of from a random classifier.
- ``student``: the project's transformer student (:func:`train.students.build_student`, a Hugging Face sequence
  classifier on the [CLS] pooler with a fresh classifier), as ``train/finetune.py`` trains it.

Both train with :func:`train.finetune.train_student` (AdamW, linear warmup and decay): ``hard`` cross-entropy on
the reviews, or, when ``pool_texts`` with the head's ``pool_soft_labels`` are given, the ``mixed`` objective of
``train/finetune.py`` (cross-entropy on reviews plus ``T^2 * KL`` to the head's distribution on pool texts,
Hinton et al. 2015). A stratified share of the reviews (``holdout_fraction``) is kept out of training and gives
:attr:`FineTuned.holdout_accuracy`; the rows are in :attr:`FineTuned.holdout_rows`, so the caller can measure the
frozen head on the very same records (fitted without them) before swapping.

:meth:`FineTuned.save` writes a directory ``python -m service --classifier NAME=DIR`` serves at ``POST /classify``
(``config.json`` with ``id2label``, the tokenizer, ``model.onnx`` exported by :func:`train.students.export_onnx`,
optionally the calibrated int8 graph as ``train/finetune.py`` builds it) and :meth:`FineTuned.load` reads it back.

torch and transformers are imported inside the functions: this optional path needs the ``train`` extra.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

logger = logging.getLogger(__name__)

RECIPES = ("lpft", "student")
FORMAT_FILE = "finetuned.json"
WEIGHTS_FILE = "finetuned.safetensors"  # not an HF weight name: the service runs the ONNX graph, never these
DEFAULT_BASE_MODEL = "packaged:all-MiniLM-L6-v2"


class FineTuneError(ValueError):
    """Reviews that cannot fine-tune a classifier (too few, a single class, labels out of range, shapes)."""


_CLASS_CACHE: dict = {}


def _mean_pool_classifier():
    """The :class:`torch.nn.Module` class of the ``lpft`` recipe (defined on first use, so that importing this
    module does not import torch)."""
    if "cls" in _CLASS_CACHE:
        return _CLASS_CACHE["cls"]
    import torch
    import torch.nn.functional as F
    from torch import nn

    class MeanPoolClassifier(nn.Module):
        """``(input_ids, attention_mask)`` int64 ``(B, L)`` -> logits ``(B, K)``: encoder, mean over real
        tokens, L2 normalisation (the served sentence embedding), linear layer."""

        def __init__(self, encoder, num_labels: int):
            super().__init__()
            self.encoder = encoder
            self.classifier = nn.Linear(encoder.config.hidden_size, num_labels)

        def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            return F.normalize(pooled, p=2, dim=-1)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.classifier(self.embed(input_ids, attention_mask))

    _CLASS_CACHE["cls"] = MeanPoolClassifier
    return MeanPoolClassifier


@dataclass
class FineTuned:
    """A fine-tuned classifier and what its training measured.

    Attributes:
        labels: class names; column order of :meth:`predict_proba`.
        recipe: ``lpft`` or ``student``.
        model: the torch module, ``(input_ids, attention_mask) -> logits (B, K)``.
        tokenizer: its tokenizer; max_length: tokens per text.
        holdout_rows: indices into the reviewed records that were kept out of training, ``(h,)``.
        holdout_accuracy: accuracy on them (``None`` without a holdout).
        holdout_accuracy_probe: accuracy on them of the linear probe before fine-tuning (``lpft``): the frozen
            embeddings' logistic regression on the same training reviews.
        train_seconds: wall time of the whole call (probe, training, holdout scoring).
        history: :func:`train.finetune.train_student`'s history plus ``max_steps`` and the step time probed.
    """

    labels: list[str]
    recipe: str
    model: object
    tokenizer: object
    max_length: int
    holdout_rows: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    holdout_accuracy: float | None = None
    holdout_accuracy_probe: float | None = None
    train_seconds: float = 0.0
    history: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def logits(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """``(n, K)`` float32 logits of ``texts`` (batches of similar length, so little padding)."""
        self.model.eval()
        return _batched(self.model, self.tokenizer, texts, self.max_length, len(self.labels), batch_size)

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """``(n, K)`` probabilities (softmax of :meth:`logits`), rows summing to 1."""
        from service.calibration import softmax

        return softmax(self.logits(texts, batch_size).astype(np.float64), axis=-1)

    # persistence --------------------------------------------------------------------------------------------
    def save(self, directory: str | Path, *, int8: bool = False, calibration_texts: Sequence[str] = ()) -> Path:
        """Write a classifier directory the service serves (``python -m service --classifier NAME=DIR``).

        ``student``: :func:`train.students.save_student` (Hugging Face format). ``lpft``: ``config.json`` (the
        encoder's, with ``id2label``), the tokenizer, ``finetuned.safetensors`` (for :meth:`load`). Both get
        ``model.onnx`` (:func:`train.students.export_onnx`) and ``finetuned.json`` (recipe, labels, holdout
        accuracy, training counts). With ``int8``, ``quantization.json`` and ``model.int8.onnx`` are calibrated on
        ``calibration_texts`` and built as ``train/finetune.py`` does (slow on a busy CPU: it also times three
        graphs); without it the service runs the float32 graph.

        Raises:
            ValueError: ``int8`` without calibration texts.
        """
        from train.students import export_onnx, save_student

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.eval()
        if self.recipe == "student":
            save_student(self.model, directory, kind="transformer", labels=self.labels, multi_label=False,
                         tokenizer=self.tokenizer, max_length=self.max_length)
        else:
            from safetensors.torch import save_file

            config = self.model.encoder.config
            config.id2label = dict(enumerate(self.labels))
            config.label2id = {label: i for i, label in enumerate(self.labels)}
            config.problem_type = "single_label_classification"
            config.save_pretrained(directory)
            save_file({k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()},
                      str(directory / WEIGHTS_FILE))
            self.tokenizer.model_max_length = self.max_length
            self.tokenizer.save_pretrained(directory)
        fp32 = export_onnx(self.model, directory / "model.onnx")
        if int8:
            if not calibration_texts:
                raise ValueError("int8 needs calibration_texts (a few hundred texts like the ones it will score)")
            from service.quantization import build_int8
            from train.quantize import build_spec

            spec, measured = build_spec(fp32, self.tokenizer, list(calibration_texts), max_length=self.max_length,
                                        timing_examples=min(64, len(calibration_texts)))
            spec.save(directory)
            mode = spec.engines["onnxruntime"] if spec.engines["onnxruntime"] != "none" else "dynamic"
            build_int8(fp32, directory / "model.int8.onnx", mode, spec)
            self.meta["quantization"] = {"engines": spec.engines, **measured}
        info = {"kind": "encoder-finetune", "format_version": 1, "recipe": self.recipe, "labels": self.labels,
                "max_length": self.max_length, "holdout_rows": int(len(self.holdout_rows)),
                "holdout_accuracy": self.holdout_accuracy, "holdout_accuracy_probe": self.holdout_accuracy_probe,
                "train_seconds": round(self.train_seconds, 2), **self.meta}
        (directory / FORMAT_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False, default=float) + "\n",
                                             encoding="utf-8")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "FineTuned":
        """Read a directory written by :meth:`save` back into torch.

        Raises:
            FineTuneError: not such a directory.
        """
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        directory = Path(directory)
        try:
            info = json.loads((directory / FORMAT_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FineTuneError(f"{directory} holds no fine-tuned classifier ({FORMAT_FILE} missing)") from None
        tokenizer = AutoTokenizer.from_pretrained(directory)
        if info["recipe"] == "student":
            from train.students import load_student

            model, _ = load_student(directory)
        else:
            from safetensors.torch import load_file

            encoder = AutoModel.from_config(AutoConfig.from_pretrained(directory), attn_implementation="eager")
            model = _mean_pool_classifier()(encoder, len(info["labels"]))
            model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
        meta = {k: v for k, v in info.items() if k not in ("kind", "format_version", "recipe", "labels", "max_length",
                                                          "holdout_rows", "holdout_accuracy",
                                                          "holdout_accuracy_probe", "train_seconds")}
        return cls(list(info["labels"]), info["recipe"], model.eval(), tokenizer, int(info["max_length"]),
                   holdout_accuracy=info.get("holdout_accuracy"),
                   holdout_accuracy_probe=info.get("holdout_accuracy_probe"),
                   train_seconds=float(info.get("train_seconds", 0.0)), meta=meta)


def holdout_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train_rows, holdout_rows)``: a stratified ``fraction`` of each class held out (none of a class with a
    single record, so every class keeps a training example)."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        rows = rows[rng.permutation(len(rows))]
        n = int(round(fraction * len(rows))) if len(rows) > 1 else 0
        n = min(n, len(rows) - 1)
        held.append(rows[:n])
        train.append(rows[n:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))


def finetune_on_reviews(texts_reviewed: Sequence[str], labels_reviewed, labels: Sequence[str], *,
                        pool_texts: Sequence[str] | None = None, pool_soft_labels: np.ndarray | None = None,
                        embeddings_reviewed: np.ndarray | None = None, recipe: str = "lpft",
                        base_model: str = DEFAULT_BASE_MODEL, epochs: float = 3.0, max_length: int = 64,
                        batch_size: int = 16, lr: float = 5e-5, seed: int = 0,
                        time_budget_seconds: float | None = None, holdout_fraction: float = 0.2,
                        pool_limit: int = 1000, w_hard: float = 0.5, w_soft: float = 0.5,
                        temperature: float = 2.0, num_threads: int | None = None) -> FineTuned:
    """Fine-tune the encoder on reviewed records (see the module docstring for the recipes).

    Args:
        texts_reviewed: the ``n`` reviewed texts.
        labels_reviewed: ``(n,)`` their label indices into ``labels``.
        labels: the ``K`` class names.
        pool_texts, pool_soft_labels: unreviewed texts and the head's ``(m, K)`` probabilities for them; when
            given, up to ``pool_limit`` of them (a seeded random sample) join training with the ``mixed`` objective
            (``w_hard * CE + w_soft * T^2 * KL``, ``temperature`` T). Reviewed texts among them are dropped.
        embeddings_reviewed: ``(n, d)`` the frozen sentence embeddings of the reviewed texts (the pool store has
            them), for the linear probe of ``lpft``; computed with the base encoder when ``None``.
        recipe: ``lpft`` or ``student``.
        base_model: encoder to start from (``packaged:all-MiniLM-L6-v2``, a directory or a hub id).
        epochs: passes over the training examples (fewer when the time budget ends training first).
        max_length: tokens per text; batch_size: texts per step; lr: AdamW peak learning rate.
        time_budget_seconds: wall-time limit of the call up to the end of training (model load and linear probe
            included; the held-out scoring comes after it): one step is timed on a training batch, and the steps
            are capped to what the rest of the budget fits (at least one; the linear decay then ends there); if
            the machine slows down after that probe, training stops at the first step that would start past the
            budget (``history["stopped_by_budget"]``).
        holdout_fraction: stratified share of the reviews kept out of training for :attr:`FineTuned.holdout_accuracy`
            (``0``: train on every review, no accuracy).
        num_threads: torch intra-op threads (``None``: torch's default, one per core).

    Returns:
        :class:`FineTuned`.

    Raises:
        FineTuneError: fewer than two reviewed classes in the training share, labels out of range, lengths or
            shapes that disagree, unknown recipe.
        service.sources.ModelSourceError: ``base_model`` cannot be resolved.
    """
    started = time.perf_counter()
    texts_reviewed = [str(t) for t in texts_reviewed]
    y = np.asarray(labels_reviewed, dtype=np.int64).reshape(-1)
    labels = list(labels)
    k = len(labels)
    if recipe not in RECIPES:
        raise FineTuneError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    if len(y) != len(texts_reviewed):
        raise FineTuneError(f"{len(texts_reviewed)} reviewed texts but {len(y)} labels")
    if k < 2 or (len(y) and (y.min() < 0 or y.max() >= k)):
        raise FineTuneError(f"labels of the reviews must be indices into the {k} labels {labels}")
    if not 0.0 <= holdout_fraction < 1.0:
        raise FineTuneError(f"holdout_fraction must lie in [0, 1), got {holdout_fraction}")
    if (pool_texts is None) != (pool_soft_labels is None):
        raise FineTuneError("give pool_texts and pool_soft_labels together")
    if pool_soft_labels is not None:
        pool_soft_labels = np.asarray(pool_soft_labels, dtype=np.float64)
        if pool_soft_labels.shape != (len(pool_texts), k):
            raise FineTuneError(f"pool_soft_labels has shape {pool_soft_labels.shape}, want ({len(pool_texts)}, {k})")
    train_rows, held_rows = holdout_split(y, holdout_fraction, seed)
    if len(np.unique(y[train_rows])) < 2:
        raise FineTuneError(f"the reviews hold {len(np.unique(y))} class(es): fine-tuning needs at least two")

    import torch
    from transformers import AutoModel, AutoTokenizer

    from service.sources import resolve_model
    from train.finetune import seed_everything, student_loss, train_student
    from train.student_data import Example, StudentData

    if num_threads:
        torch.set_num_threads(num_threads)
    seed_everything(seed)
    base = resolve_model(base_model).path
    tokenizer = AutoTokenizer.from_pretrained(base)
    if recipe == "student":
        from train.students import build_student

        model = build_student("transformer", labels=labels, multi_label=False, base_dir=base)
    else:
        model = _mean_pool_classifier()(AutoModel.from_pretrained(base, attn_implementation="eager"), k)
    finetuned = FineTuned(labels, recipe, model, tokenizer, max_length, holdout_rows=held_rows)

    probe_accuracy = None
    if recipe == "lpft":
        probe_accuracy = _linear_probe(finetuned, texts_reviewed, y, train_rows, held_rows, embeddings_reviewed, seed)

    examples = [Example(texts_reviewed[i], label=int(y[i])) for i in train_rows]
    objective = "hard"
    if pool_texts is not None and pool_limit > 0:
        reviewed = set(texts_reviewed)
        candidates = [i for i, t in enumerate(pool_texts) if t not in reviewed]
        rng = np.random.default_rng(seed)
        chosen = sorted(rng.choice(candidates, size=min(pool_limit, len(candidates)), replace=False).tolist())
        examples += [Example(str(pool_texts[i]), soft=pool_soft_labels[i]) for i in chosen]
        objective = "mixed"
    train_data = StudentData(labels, False, examples)
    device = torch.device("cpu")
    max_steps, step_seconds = None, None
    if time_budget_seconds is not None:
        step_seconds = _time_one_step(model, train_data, tokenizer, batch_size, max_length, seed, student_loss,
                                      objective, temperature, w_hard, w_soft)
        max_steps = max(1, int((time_budget_seconds - (time.perf_counter() - started)) / step_seconds))
    deadline = None if time_budget_seconds is None else started + time_budget_seconds
    guarded = _deadline_guard()(model, deadline)
    try:
        history = train_student(guarded, train_data, StudentData(labels, False, []), tokenizer, objective=objective,
                                device=device, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=0.01,
                                warmup_ratio=0.1, max_length=max_length, temperature=temperature, w_hard=w_hard,
                                w_soft=w_soft, patience=10 ** 6, seed=seed, max_steps=max_steps)
    except _BudgetSpent:  # the load rose after the probe: stop at the last finished step
        steps_per_epoch = -(-len(examples) // batch_size)
        history = {"steps_done": guarded.steps, "epochs_done": round(guarded.steps / steps_per_epoch, 2),
                   "stopped_by_budget": True}
        logger.info("time budget of %.0f s spent after %d steps", time_budget_seconds, guarded.steps)
    model.eval()
    history.update(max_steps=max_steps, probed_step_seconds=step_seconds, objective=objective,
                   train_examples=len(examples), train_reviews=int(len(train_rows)))
    finetuned.history = history
    finetuned.holdout_accuracy_probe = probe_accuracy
    if len(held_rows):
        predicted = finetuned.logits([texts_reviewed[i] for i in held_rows]).argmax(axis=1)
        finetuned.holdout_accuracy = float((predicted == y[held_rows]).mean())
    finetuned.train_seconds = time.perf_counter() - started
    finetuned.meta = {"base_model": base_model, "reviewed": int(len(y)), "objective": objective,
                      "epochs_done": history.get("epochs_done"), "steps_done": history.get("steps_done"),
                      "lr": lr, "batch_size": batch_size, "seed": seed}
    logger.info("fine-tuned (%s, %s) on %d reviews in %.1f s: held-out accuracy %s (linear probe %s)", recipe,
                objective, len(train_rows), finetuned.train_seconds, finetuned.holdout_accuracy, probe_accuracy)
    return finetuned


def _linear_probe(finetuned: FineTuned, texts: list[str], y: np.ndarray, train_rows: np.ndarray,
                  held_rows: np.ndarray, embeddings: np.ndarray | None, seed: int) -> float | None:
    """Fit the ``lpft`` classifier layer as a logistic regression on frozen embeddings of the training reviews
    (scikit-learn, multinomial, L2, C=1 as the adapted head), copy it into the model, and return its accuracy on
    the held-out reviews (``None`` without any)."""
    import torch
    from sklearn.linear_model import LogisticRegression

    if embeddings is None:
        model = finetuned.model.eval()
        embeddings = _batched(model.embed, finetuned.tokenizer, texts, finetuned.max_length,
                              model.classifier.in_features)
    x = np.asarray(embeddings, dtype=np.float64)
    if x.shape[0] != len(texts):
        raise FineTuneError(f"embeddings_reviewed has {x.shape[0]} rows for {len(texts)} reviewed texts")
    k = len(finetuned.labels)
    probe = LogisticRegression(C=1.0, max_iter=500, random_state=seed).fit(x[train_rows], y[train_rows])
    coef = np.zeros((k, x.shape[1]))
    intercept = np.full(k, -10.0)
    if len(probe.classes_) == 2:  # scikit-learn's binary form: one row for the second class
        coef[probe.classes_[1]], coef[probe.classes_[0]] = probe.coef_[0] / 2, -probe.coef_[0] / 2
        intercept[probe.classes_[1]], intercept[probe.classes_[0]] = probe.intercept_[0] / 2, -probe.intercept_[0] / 2
    else:
        coef[probe.classes_], intercept[probe.classes_] = probe.coef_, probe.intercept_
    with torch.no_grad():
        finetuned.model.classifier.weight.copy_(torch.as_tensor(coef, dtype=torch.float32))
        finetuned.model.classifier.bias.copy_(torch.as_tensor(intercept, dtype=torch.float32))
    if not len(held_rows):
        return None
    return float(((x[held_rows] @ coef.T + intercept).argmax(axis=1) == y[held_rows]).mean())


def _batched(call, tokenizer, texts: Sequence[str], max_length: int, width: int, batch_size: int = 64) -> np.ndarray:
    """``(n, width)`` float32 outputs of ``call(input_ids, attention_mask)`` over ``texts``, in batches of
    similar length (sorted by characters, so little padding), without gradients."""
    import torch

    texts = list(texts)
    out = np.zeros((len(texts), width), dtype=np.float32)
    order = np.argsort([len(t) for t in texts], kind="stable")
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")
            out[rows] = call(enc["input_ids"], enc["attention_mask"]).float().numpy()
    return out


class _BudgetSpent(Exception):
    """Raised by the deadline guard before a training forward pass that would start after the deadline."""


def _deadline_guard():
    """A module class wrapping a model: its training forward passes raise :class:`_BudgetSpent` once the deadline
    (``time.perf_counter()`` seconds) has passed, so a training loop stops between two whole steps."""
    if "guard" in _CLASS_CACHE:
        return _CLASS_CACHE["guard"]
    from torch import nn

    class DeadlineGuard(nn.Module):
        def __init__(self, model, deadline: float | None):
            super().__init__()
            self.model = model
            self.deadline = deadline
            self.steps = 0

        def forward(self, input_ids, attention_mask):
            if self.training:
                if self.deadline is not None and self.steps and time.perf_counter() > self.deadline:
                    raise _BudgetSpent()
                self.steps += 1
            return self.model(input_ids, attention_mask)

    _CLASS_CACHE["guard"] = DeadlineGuard
    return DeadlineGuard


def _time_one_step(model, data, tokenizer, batch_size: int, max_length: int, seed: int, student_loss, objective: str,
                   temperature: float, w_hard: float, w_soft: float) -> float:
    """Seconds of one forward and backward pass on the first training batch (gradients discarded)."""
    from train.finetune import make_batches

    batch = next(make_batches(data, tokenizer, batch_size=batch_size, max_length=max_length, seed=seed))
    model.train()
    began = time.perf_counter()
    logits = model(batch["input_ids"], batch["attention_mask"])
    student_loss(logits.float(), batch, objective=objective, multi_label=False, temperature=temperature,
                 w_hard=w_hard, w_soft=w_soft).backward()
    seconds = time.perf_counter() - began
    model.zero_grad(set_to_none=True)
    return seconds * 1.05  # the optimizer step and scheduler add a little
