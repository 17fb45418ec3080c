"""The tiny students' defaults: sizes and peak learning rates when ``--student-config`` / ``--lr`` give none.

Kept apart from :mod:`train.students` (which imports torch) so that ``train/finetune.py --help`` can state them.
Chosen by ``benchmarks/tiny_defaults.py`` on the tune halves of the dev tasks (accuracy, size, training time and
texts/s; the report is in ``benchmarks/results/tiny_defaults/``): the smallest setting of each student within one
point of the best accuracy it reached there (differences under a point are not resolved by those evaluation sets).
"""

from __future__ import annotations

#: Hyperparameters of each tiny student when ``--student-config`` gives none (a given key overrides its default).
TINY_DEFAULTS: dict[str, dict] = {
    "fasttext": {"dim": 16, "buckets": 1 << 15},
    "cnn": {"dim": 128, "filters": 100},
    "bilstm": {"dim": 64, "hidden": 128},
}
#: Peak learning rate of each student (AdamW on dense weights, SparseAdam on the tiny students' embedding tables).
LEARNING_RATES: dict[str, float] = {"transformer": 5e-5, "fasttext": 3e-2, "cnn": 3e-3, "bilstm": 1e-2}
#: Examples a step of each student (a tiny student's step is cheap: bigger batches mean fewer optimizer steps).
BATCH_SIZES: dict[str, int] = {"transformer": 32, "fasttext": 64, "cnn": 64, "bilstm": 64}
#: Passes over the training data (fastText's take milliseconds a step: Joulin et al. train 5 epochs and more).
EPOCHS: dict[str, float] = {"transformer": 3.0, "fasttext": 5.0, "cnn": 3.0, "bilstm": 3.0}


def describe() -> str:
    """One line of the defaults for ``--help``."""
    sizes = "; ".join(f"{kind} " + ", ".join(f"{k}={v}" for k, v in values.items())
                      for kind, values in TINY_DEFAULTS.items())
    return (f"{sizes}; lr " + ", ".join(f"{kind} {lr:g}" for kind, lr in LEARNING_RATES.items())
            + "; batch " + ", ".join(f"{kind} {n}" for kind, n in BATCH_SIZES.items())
            + "; epochs " + ", ".join(f"{kind} {n:g}" for kind, n in EPOCHS.items()))
