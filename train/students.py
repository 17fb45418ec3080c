"""Student classifiers for a fixed label set, and how they are saved, loaded and exported to ONNX.

- ``transformer``: any Hugging Face encoder (default the packaged all-MiniLM-L6-v2) with a classification head
  (``AutoModelForSequenceClassification``); saved as a Hugging Face directory.
- ``fasttext``: mean of token and hashed token-bigram embeddings, then a linear layer (Joulin et al. 2016,
  "Bag of Tricks for Efficient Text Classification", arXiv:1607.01759).
- ``cnn``: convolutions of widths 3, 4, 5 over word embeddings, max-pooled over time, dropout, linear
  (Kim 2014, "Convolutional Neural Networks for Sentence Classification", arXiv:1408.5882).
- ``bilstm``: a one-layer bidirectional LSTM, then a ReLU layer and a linear one (Tang et al. 2019,
  "Distilling Task-Specific Knowledge from BERT into Simple Neural Networks", arXiv:1903.12136). Tang et al.
  concatenate the last hidden states; with right-padded batches the backward direction would start on padding,
  so this one max-pools the outputs over the real tokens instead.

The tiny students read the encoder's WordPiece ids (the same tokenizer as the teacher) and start their word
embeddings from the encoder's embedding table when the dimensions match (its top principal directions when narrower),
as Kim 2014 started from pre-trained vectors. Their embedding tables are ``sparse``: a batch's gradient holds only the
rows its texts touch, and :func:`train.finetune.train_student` updates them with ``torch.optim.SparseAdam``, as
fastText updates only a text's rows (Joulin et al. 2016), so a step costs what the batch reads, not the table's size.
Every student maps ``(input_ids, attention_mask)`` int64 ``(batch, seq)`` to logits ``(batch, K)``.

Defaults (:data:`train.student_defaults.TINY_DEFAULTS`, what ``train/finetune.py --student fasttext|cnn|bilstm`` builds without
``--student-config``) were chosen by ``benchmarks/tiny_defaults.py`` on the tune halves of the dev tasks (size,
accuracy, texts/s; report in ``benchmarks/results/tiny_defaults/``).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from train.student_defaults import TINY_DEFAULTS

STUDENTS = ("transformer", "fasttext", "cnn", "bilstm")

TINY_CONFIG = "student_config.json"
TINY_WEIGHTS = "student.safetensors"
OPSET = 14


class FastTextStudent(nn.Module):
    """Bag of token and hashed bigram embeddings (mean over real tokens) -> linear. Joulin et al. 2016.

    Bigram ids are ``(id_i * 1_000_003 + id_{i+1}) mod buckets``, computed inside the graph. Parameters:
    ``(vocab_size + buckets) * dim + (dim + 1) * num_labels``; both tables are sparse (module docstring).
    """

    def __init__(self, vocab_size: int, num_labels: int, *, dim: int = 16, buckets: int = 1 << 15,
                 dropout: float = 0.1):
        super().__init__()
        self.buckets = buckets
        self.unigram = nn.Embedding(vocab_size, dim, sparse=True)
        self.bigram = nn.Embedding(buckets, dim, sparse=True)
        nn.init.normal_(self.bigram.weight, std=0.02)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(dim, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).float()
        uni = (self.unigram(input_ids) * mask).sum(1)
        pair_ids = torch.remainder(input_ids[:, :-1] * 1_000_003 + input_ids[:, 1:], self.buckets)
        pair_mask = (attention_mask[:, :-1] * attention_mask[:, 1:]).unsqueeze(-1).float()
        bi = (self.bigram(pair_ids) * pair_mask).sum(1)
        pooled = (uni + bi) / (mask.sum(1) + pair_mask.sum(1)).clamp_min(1.0)
        return self.classifier(self.dropout(pooled))


class KimCNNStudent(nn.Module):
    """Conv1d of widths 3/4/5 (100 filters each) over word embeddings, ReLU, max over real tokens, dropout,
    linear. Kim 2014."""

    def __init__(self, vocab_size: int, num_labels: int, *, dim: int = 128, filters: int = 100,
                 widths: tuple[int, ...] = (3, 4, 5), dropout: float = 0.5):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, sparse=True)
        self.widths = tuple(widths)
        self.convs = nn.ModuleList(nn.Conv1d(dim, filters, w, padding=w - 1) for w in widths)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(filters * len(widths), num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embedding(input_ids).transpose(1, 2)  # (batch, dim, seq)
        pooled = []
        for conv, width in zip(self.convs, self.widths):
            h = F.relu(conv(x))[:, :, : input_ids.shape[1]]  # padding=w-1 keeps every window; trim to seq
            h = h.masked_fill(attention_mask.unsqueeze(1) == 0, -1e4)
            pooled.append(h.max(dim=2).values)
        return self.classifier(self.dropout(torch.cat(pooled, dim=1)))


class BiLSTMStudent(nn.Module):
    """Bidirectional LSTM over word embeddings, max-pooled over real tokens, ReLU layer, linear. Tang et al. 2019."""

    def __init__(self, vocab_size: int, num_labels: int, *, dim: int = 64, hidden: int = 128, dropout: float = 0.2):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, sparse=True)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)
        self.dense = nn.Linear(2 * hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embedding(input_ids))
        out = out.masked_fill(attention_mask.unsqueeze(-1) == 0, -1e4)
        pooled = out.max(dim=1).values
        return self.classifier(self.dropout(F.relu(self.dense(pooled))))


_TINY = {"fasttext": FastTextStudent, "cnn": KimCNNStudent, "bilstm": BiLSTMStudent}


class TransformerStudent(nn.Module):
    """A Hugging Face sequence classifier behind the students' ``(input_ids, attention_mask) -> logits`` call."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def build_student(kind: str, *, labels: list[str], multi_label: bool, base_dir: Path, hyperparameters: dict | None = None,
                  ) -> nn.Module:
    """A fresh student of ``kind`` for ``labels``.

    ``base_dir`` is the encoder directory: the transformer student starts from it; the tiny ones take its
    vocabulary size and, where the width matches, its word embeddings. A tiny student's ``hyperparameters`` override
    :data:`TINY_DEFAULTS` key by key; the full set is kept on the model (``student_hyperparameters``) and saved.

    Raises:
        ValueError: unknown ``kind``.
    """
    hyperparameters = dict(hyperparameters or {})
    id2label = dict(enumerate(labels))
    if kind == "transformer":
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(
            base_dir, num_labels=len(labels), id2label=id2label, label2id={v: k for k, v in id2label.items()},
            problem_type="multi_label_classification" if multi_label else "single_label_classification",
            attn_implementation="eager")
        return TransformerStudent(model)
    if kind not in _TINY:
        raise ValueError(f"unknown student {kind!r}; choose one of {', '.join(STUDENTS)}")
    embeddings = _encoder_embeddings(base_dir)
    vocab_size = embeddings.shape[0]
    hyperparameters = {**TINY_DEFAULTS[kind], **hyperparameters}
    model = _TINY[kind](vocab_size, len(labels), **hyperparameters)
    table = model.unigram if kind == "fasttext" else model.embedding
    with torch.no_grad():
        if table.weight.shape[1] == embeddings.shape[1]:
            table.weight.copy_(embeddings)
        elif table.weight.shape[1] < embeddings.shape[1]:  # the table's top principal directions (PCA), which keep
            centred = embeddings - embeddings.mean(0)      # more of its geometry than a random projection
            _, _, v = torch.linalg.svd(centred[:: max(1, len(centred) // 8192)], full_matrices=False)
            projected = centred @ v[: table.weight.shape[1]].T
            table.weight.copy_(projected * (embeddings.std() / projected.std().clamp_min(1e-12)))
        else:  # wider than the encoder: a fixed random projection keeps its geometry roughly
            projection = torch.randn(embeddings.shape[1], table.weight.shape[1]) / embeddings.shape[1] ** 0.5
            table.weight.copy_(embeddings @ projection)
    model.student_kind = kind
    model.student_hyperparameters = hyperparameters
    return model


def _encoder_embeddings(base_dir: Path) -> torch.Tensor:
    """The word-embedding table of the encoder in ``base_dir``, float32 ``(vocab, dim)``."""
    from safetensors.torch import load_file

    path = Path(base_dir) / "model.safetensors"
    if not path.is_file():
        from transformers import AutoModel

        return AutoModel.from_pretrained(base_dir).get_input_embeddings().weight.detach().float()
    tensors = load_file(str(path))
    name = next((k for k in tensors if k.endswith("word_embeddings.weight")), None)
    if name is None:
        raise ValueError(f"{base_dir} has no word_embeddings table")
    return tensors[name].float()


def save_student(model: nn.Module, output_dir: Path, *, kind: str, labels: list[str], multi_label: bool,
                 tokenizer, max_length: int) -> None:
    """Write a student as a model directory: Hugging Face format for transformers (``id2label`` set), or
    ``student_config.json`` + ``student.safetensors`` + a ``config.json`` with ``id2label`` for the tiny ones.
    The tokenizer goes along in both cases."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    id2label = {str(i): label for i, label in enumerate(labels)}
    problem = "multi_label_classification" if multi_label else "single_label_classification"
    if kind == "transformer":
        model.model.config.id2label = dict(enumerate(labels))
        model.model.config.label2id = {label: i for i, label in enumerate(labels)}
        model.model.save_pretrained(output_dir, safe_serialization=True)
    else:
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(output_dir / TINY_WEIGHTS))
        (output_dir / TINY_CONFIG).write_text(json.dumps(
            {"student": kind, "hyperparameters": model.student_hyperparameters,
             "vocab_size": int((model.unigram if kind == "fasttext" else model.embedding).weight.shape[0])},
            indent=2) + "\n", encoding="utf-8")
        (output_dir / "config.json").write_text(json.dumps(
            {"architectures": [type(model).__name__], "model_type": f"zsc-{kind}", "id2label": id2label,
             "label2id": {v: int(k) for k, v in id2label.items()}, "problem_type": problem,
             "max_position_embeddings": max_length}, indent=2) + "\n", encoding="utf-8")
    tokenizer.model_max_length = max_length
    tokenizer.save_pretrained(output_dir)


def load_student(model_dir: Path) -> tuple[nn.Module, str]:
    """A saved student and its kind (``transformer`` for a Hugging Face directory)."""
    model_dir = Path(model_dir)
    if not (model_dir / TINY_CONFIG).is_file():
        from transformers import AutoModelForSequenceClassification

        return TransformerStudent(AutoModelForSequenceClassification.from_pretrained(
            model_dir, attn_implementation="eager")).eval(), "transformer"
    from safetensors.torch import load_file

    meta = json.loads((model_dir / TINY_CONFIG).read_text(encoding="utf-8"))
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    weights = load_file(str(model_dir / TINY_WEIGHTS))
    hyperparameters = {**_shapes_of(meta["student"], weights), **meta["hyperparameters"]}
    model = _TINY[meta["student"]](meta["vocab_size"], len(config["id2label"]), **hyperparameters)
    model.load_state_dict(weights)
    model.student_kind, model.student_hyperparameters = meta["student"], hyperparameters
    return model.eval(), meta["student"]


def _shapes_of(kind: str, weights: dict) -> dict:
    """The size hyperparameters of a saved tiny student read off its weights (students saved before the defaults
    were stored with them)."""
    if kind == "fasttext":
        return {"dim": int(weights["unigram.weight"].shape[1]), "buckets": int(weights["bigram.weight"].shape[0])}
    if kind == "cnn":
        return {"dim": int(weights["embedding.weight"].shape[1]), "filters": int(weights["convs.0.weight"].shape[0])}
    return {"dim": int(weights["embedding.weight"].shape[1]), "hidden": int(weights["dense.weight"].shape[0])}


def export_onnx(model: nn.Module, target: Path) -> Path:
    """Export a student (``(input_ids, attention_mask) -> logits``, both axes dynamic) at opset 14 with the
    TorchScript exporter (DeepSparse 1.8 lacks opset 17's LayerNormalization; see
    :mod:`service.onnx_export`). Written to a temporary file and renamed."""
    model = model.eval().cpu()
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    dummy = (torch.ones((2, 16), dtype=torch.int64), torch.ones((2, 16), dtype=torch.int64))
    tmp = target.with_name(target.stem + f".{os.getpid()}.tmp.onnx")
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            "logits": {0: "batch"}}
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, dummy, str(tmp), input_names=["input_ids", "attention_mask"],
                          output_names=["logits"], dynamic_axes=axes, opset_version=OPSET, do_constant_folding=True,
                          dynamo=False)
    os.replace(tmp, target)
    return target


def size_facts(model: nn.Module, model_dir: Path) -> dict:
    """Parameters and bytes on disk of a saved student."""
    params = sum(p.numel() for p in model.parameters())
    files = {p.name: p.stat().st_size for p in Path(model_dir).iterdir() if p.is_file()}
    weights = sum(v for k, v in files.items() if k.endswith((".safetensors", ".bin")))
    return {"parameters": params, "weights_mb": round(weights / 1e6, 2),
            "onnx_mb": round(files.get("model.onnx", 0) / 1e6, 2),
            "onnx_int8_mb": round(files.get("model.int8.onnx", 0) / 1e6, 2)}
