"""``adapt``: fit the pool-adapted head on a file of unlabeled texts, without Argilla, and save it.

The same code as ``push`` and ``simulate``: the pool is scored (zero-shot) and embedded once by a scorer
(:mod:`pool.scorers`, a running service or in-process) and cached as a :class:`pool.store.PoolStore`
(:func:`annotate.simulate.scored_split`), then :func:`annotate.adaptive.adapt` fits the head with no review
(self-training, Gera et al. 2022; prior by EM, Saerens et al. 2002) and :meth:`AdaptiveHead.save` writes the head
directory that ``python -m service --classifier NAME=DIR`` serves and ``train/finetune.py --teacher-head DIR``
distils from.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from annotate.adaptive import Adapted, adapt

logger = logging.getLogger(__name__)


class KeptZeroShot(RuntimeError):
    """The adaptation guard kept the zero-shot scores: there is no head to save (message says why)."""


@dataclass
class AdaptResult:
    """What :func:`adapt_pool` did: the fit (``adapted``), where the head went, the pool size, the encoder."""

    adapted: Adapted
    directory: Path
    pool_size: int
    encoder: dict


def encoder_of(scorer, embeddings: np.ndarray, texts: list[str]) -> dict:
    """``{"model_id", "fingerprint", "dim"}`` of the scorer's sentence encoder. A scorer that served every
    embedding from the cache may not know it yet: one text is embedded to ask (one encoder pass)."""
    encoder = dict(scorer.encoder or {})
    if not encoder.get("fingerprint"):
        scorer.embed(texts[:1])
        encoder = dict(scorer.encoder or {})
    encoder["dim"] = int(embeddings.shape[1])
    return encoder


def adapt_pool(texts: list[str], labels: list[str], hypothesis_template: str, scorer, output: Path,
               cache_root: Path, *, method: str = "embedding", meta: dict | None = None, config=None) -> AdaptResult:
    """Score, embed (cached), fit the pool-adapted head with zero reviews, and save it in ``output``.

    Args:
        texts: the pool, ``n`` texts.
        labels: the ``K`` candidate labels (score column order).
        scorer: an :class:`pool.scorers.HttpScorer` or :class:`~pool.scorers.LocalScorer` built for
            ``labels`` and ``hypothesis_template``.
        cache_root: folder of cached scored pools (one sub-folder per texts + key).
        meta: extra fields stored in ``head.json``.
        config: the head's :class:`annotate.adaptive.HeadConfig` (default: its defaults).

    Returns:
        :class:`AdaptResult`.

    Raises:
        KeptZeroShot: the guard kept the zero-shot scores (``adapted.head is None``); nothing is written.
        pool.scorers.ScoringError: the scorer failed.
        annotate.adaptive.AdaptError: the scores and embeddings do not fit together.
    """
    from annotate.simulate import scored_split

    key = {"labels": list(labels), "hypothesis_template": hypothesis_template, "method": method,
           "model": scorer.model_id}
    descriptions = getattr(scorer, "label_descriptions", None)
    if descriptions:
        key["label_descriptions"] = descriptions
    embeddings, scores = scored_split(list(texts), scorer, cache_root, key)
    encoder = encoder_of(scorer, embeddings, texts)
    adapted = adapt(embeddings, scores, labels, config=config, encoder=encoder,
                    meta={"hypothesis_template": hypothesis_template, "teacher_agent": scorer.agent,
                          **({"label_descriptions": descriptions} if descriptions else {}), **(meta or {})})
    if adapted.head is None:
        raise KeptZeroShot(adapted.report.note or "the guard kept the zero-shot scores")
    directory = adapted.head.save(output)
    logger.info("head %s (%s, %d pseudo-labels, changed %.1f%% of the zero-shot labels) saved in %s",
                adapted.head.revision, adapted.report.mode, adapted.report.pseudo_labels,
                100 * (adapted.report.changed_share or 0.0), directory)
    return AdaptResult(adapted, Path(directory), len(texts), encoder)
