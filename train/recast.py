"""Topic recasting: unlabelled premises become "This text is about {topic}." entailment pairs.

Laurer et al. (2023, "Building Efficient Universal Classifiers with Natural Language Inference")
recast labelled classification datasets as NLI pairs (text + hypothesis for the true label ->
entailment, for a wrong label -> contradiction), which is what teaches an NLI model the
zero-shot-classification task. The only labelled classification sets on these machines (AG News,
emotion) are the zero-shot evaluation sets and must stay out of the teacher, so this module makes
the topic labels itself: the sentence encoder all-MiniLM-L6-v2 (a bi-encoder trained on 1B sentence
pairs) ranks a list of generic topics (``train/topics.txt``, from Wikipedia's main topic
classifications and the IAB content taxonomy) for each premise of the NLI training mix. The top
topic, when it wins by a margin, gives an entailment pair; a topic from the bottom half gives a
contradiction pair. This distils the bi-encoder's topical knowledge into the cross-encoder; the
labels are noisy pseudo-labels, and no evaluation text is involved.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer

from train.nli_data import NLIPair

logger = logging.getLogger(__name__)

#: Hypothesis templates drawn at random for recast pairs, so the teacher does not overfit one phrasing.
RECAST_TEMPLATES: tuple[str, ...] = (
    "This text is about {}.",
    "This example is about {}.",
    "The topic of this text is {}.",
    "This is about {}.",
    "This article is about {}.",
    "The text is about {}.",
)
#: Template used to embed the topics for ranking.
RANKING_TEMPLATE = "This text is about {}."

TOPICS_FILE = Path(__file__).with_name("topics.txt")


def read_topics(path: Path = TOPICS_FILE) -> list[str]:
    """Topic names, one a line; ``#`` comments and blank lines skipped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


@torch.inference_mode()
def embed(texts: list[str], encoder_dir: Path, *, batch_size: int = 64, max_length: int = 128,
          device: str = "cpu", desc: str = "embedding") -> np.ndarray:
    """Mean-pooled, L2-normalised sentence embeddings (sentence-transformers' recipe).

    Returns:
        float32 array of shape ``(len(texts), hidden_size)``.
    """
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    model = AutoModel.from_pretrained(encoder_dir).to(device).eval()
    order = np.argsort([len(t) for t in texts])  # length-sorted batches waste no padding
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, unit="batch"):
        idx = order[start:start + batch_size]
        enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt").to(device)
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out[idx] = torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()
    return out


def recast_topics(premises: list[str], topics: list[str], encoder_dir: Path, *, seed: int,
                  min_margin: float = 0.02, max_per_topic: int | None = None,
                  device: str = "cpu") -> list[NLIPair]:
    """Make topic-entailment pairs from unlabelled premises with bi-encoder pseudo-labels.

    For each premise: cosine similarity to every ``RANKING_TEMPLATE.format(topic)``; if the best
    topic beats the second by ``min_margin`` it becomes an entailment pair (a random template of
    :data:`RECAST_TEMPLATES`), and a random topic from the bottom half of the ranking becomes a
    contradiction pair. ``max_per_topic`` caps entailment pairs per topic so frequent topics do not
    dominate (the contradiction pair of a dropped premise is dropped with it).

    Returns:
        ``2 * kept`` pairs, source ``recast_topics``.
    """
    rng = random.Random(seed)
    premise_emb = embed(premises, encoder_dir, device=device, desc="recast: embedding premises")
    topic_emb = embed([RANKING_TEMPLATE.replace("{}", t) for t in topics], encoder_dir, device=device,
                      desc="recast: embedding topics")
    sims = premise_emb @ topic_emb.T  # (n_premises, n_topics)
    ranking = np.argsort(-sims, axis=1)
    per_topic: dict[int, int] = {}
    pairs: list[NLIPair] = []
    order = list(range(len(premises)))
    rng.shuffle(order)
    for i in order:
        best, second = ranking[i, 0], ranking[i, 1]
        if sims[i, best] - sims[i, second] < min_margin:
            continue
        if max_per_topic is not None and per_topic.get(best, 0) >= max_per_topic:
            continue
        per_topic[best] = per_topic.get(best, 0) + 1
        wrong = ranking[i, rng.randrange(len(topics) // 2, len(topics))]
        pairs.append(NLIPair(premises[i], rng.choice(RECAST_TEMPLATES).replace("{}", topics[best]),
                             "entailment", "recast_topics"))
        pairs.append(NLIPair(premises[i], rng.choice(RECAST_TEMPLATES).replace("{}", topics[wrong]),
                             "contradiction", "recast_topics"))
    logger.info("recast %d of %d premises into %d pairs over %d topics", len(pairs) // 2,
                len(premises), len(pairs), len(per_topic))
    return pairs
