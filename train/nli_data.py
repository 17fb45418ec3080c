"""NLI pairs: reading JSONL files, the licence-clean training mix, and label targets.

The teacher has three classes in the order of roberta-large-mnli (``0 contradiction, 1 neutral,
2 entailment``), which is also the order Hugging Face's zero-shot pipeline assumes for its
multi-label contradiction index. Two-class files (``entailment`` / ``not_entailment``) are kept and
trained with a *marginal* likelihood: ``not_entailment`` means "neutral or contradiction", so its
loss is ``-log(p_neutral + p_contradiction)`` rather than forcing either class (see
:func:`train.build_teacher.partial_label_loss`).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

#: Class order of the teacher's head (index = class id).
NLI_CLASSES: tuple[str, ...] = ("contradiction", "neutral", "entailment")
#: For every label found in the data, the class ids it allows (a set of size 1 for 3-class labels).
ALLOWED_CLASSES: dict[str, tuple[int, ...]] = {
    "contradiction": (0,),
    "neutral": (1,),
    "entailment": (2,),
    "not_entailment": (0, 1),
}


@dataclass(frozen=True)
class NLIPair:
    """One premise/hypothesis pair with its gold label (a key of :data:`ALLOWED_CLASSES`)."""

    premise: str
    hypothesis: str
    label: str
    source: str


@dataclass(frozen=True)
class MixEntry:
    """One training file of the mix: its licence as stated by the data README, and a row cap.

    ``max_per_label`` caps each label (drawn at random with the run's seed) to rebalance skewed
    files such as Breaking NLI (87% contradiction).
    """

    file: str
    licence: str
    max_per_label: int | None = None


#: The default licence-clean selection of ``shared/data/nli/train``. Left out, and why:
#: ``lingnli``, ``mpe``, ``covidfact_rte``, ``healthver`` (no licence stated); ``sick``,
#: ``scifact_rte`` (non-commercial); ``curriculum_*``, ``begin_attribution`` ("per source", not
#: checked); ``vitaminc_bigbench``, ``presup_nli_bigbench`` (carry the BIG-bench canary string,
#: whose authors ask that the data never appear in training corpora).
DEFAULT_MIX: tuple[MixEntry, ...] = (
    MixEntry("cad_snli.jsonl", "Apache-2.0 / SNLI CC BY-SA 4.0"),
    MixEntry("fever_rte_dev.jsonl", "CC BY-SA 3.0"),
    MixEntry("climate_fever.jsonl", "CC BY-SA", max_per_label=2500),
    MixEntry("breaking_nli.jsonl", "CC BY-SA 4.0", max_per_label=1500),
    MixEntry("taxinli.jsonl", "C-UDA 1.0 (computational use; results may be shared)"),
    MixEntry("fever_symmetric.jsonl", "CC BY-SA 3.0"),
    MixEntry("folio.jsonl", "CC BY-SA 4.0"),
)

#: Evaluation files (never trained on).
EVAL_FILES: dict[str, str] = {
    "mnli_dev_matched": "mnli_dev_matched.jsonl",
    "snli_test": "snli_test.jsonl",
    "xnli_en_dev": "xnli_en_dev.jsonl",
}


def read_pairs(path: Path, *, source: str | None = None) -> list[NLIPair]:
    """Read NLI pairs from a JSONL file with ``premise``, ``hypothesis`` and ``label`` fields.

    Raises:
        ValueError: a row lacks a field or has a label outside :data:`ALLOWED_CLASSES`.
    """
    pairs = []
    with Path(path).open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            try:
                premise, hypothesis, label = row["premise"], row["hypothesis"], row["label"]
            except KeyError as exc:
                raise ValueError(f"{path}:{line_no}: missing field {exc}") from None
            if label not in ALLOWED_CLASSES:
                raise ValueError(f"{path}:{line_no}: unknown label {label!r}; expected one of {sorted(ALLOWED_CLASSES)}")
            pairs.append(NLIPair(premise, hypothesis, label, source or Path(path).stem))
    return pairs


def load_mix(nli_train_dir: Path, mix: tuple[MixEntry, ...], seed: int) -> list[NLIPair]:
    """Load the training mix, applying each entry's per-label cap (deterministic for a seed).

    Raises:
        FileNotFoundError: a file of the mix is missing from ``nli_train_dir``.
    """
    rng = random.Random(seed)
    pairs: list[NLIPair] = []
    for entry in mix:
        rows = read_pairs(Path(nli_train_dir) / entry.file)
        if entry.max_per_label is not None:
            by_label: dict[str, list[NLIPair]] = {}
            for row in rows:
                by_label.setdefault(row.label, []).append(row)
            rows = []
            for label in sorted(by_label):
                group = by_label[label]
                rng.shuffle(group)
                rows.extend(group[: entry.max_per_label])
        pairs.extend(rows)
    return pairs


def decontaminate(pairs: list[NLIPair], eval_dir: Path) -> tuple[list[NLIPair], int]:
    """Drop training pairs whose premise is a premise of any evaluation file.

    The shared data removed pairs that repeat an eval pair, but premises recur with other
    hypotheses (TaxiNLI reuses MNLI dev-matched premises, CAD-SNLI some SNLI test ones): a model
    trained on them has seen part of the test input. Returns the kept pairs and how many went.
    """
    seen: set[str] = set()
    for file in sorted(Path(eval_dir).glob("*.jsonl")):
        seen.update(p.premise.strip() for p in read_pairs(file))
    kept = [p for p in pairs if p.premise.strip() not in seen]
    return kept, len(pairs) - len(kept)


def mix_summary(pairs: list[NLIPair]) -> dict[str, dict[str, int]]:
    """Counts by source and label: ``{source: {label: n, ..., "total": n}}``."""
    summary: dict[str, Counter] = {}
    for pair in pairs:
        summary.setdefault(pair.source, Counter())[pair.label] += 1
    return {src: {**dict(sorted(c.items())), "total": sum(c.values())} for src, c in sorted(summary.items())}
