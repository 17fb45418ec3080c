"""train/augment.py: Tang et al. 2019 augmentation is deterministic under a seed, uses the teacher's real WordPiece
embedding neighbours, and never changes the label of a human-labelled record."""

import numpy as np
import pytest

from train.augment import AugmentConfig, Augmenter, augment_examples
from train.student_data import Example

TEXTS = ["Oil prices rose on Monday after saboteurs blew up a pipeline in Iraq.",
         "The striker scored twice as the home team won the cup final.",
         "Shares of the chip maker fell after it cut its revenue forecast.",
         "Scientists found water ice near the moon's south pole."]


@pytest.fixture(scope="module")
def augmenter(minilm_dir):
    return Augmenter.from_encoder(minilm_dir)


def test_same_seed_same_texts_other_seed_other_texts(augmenter):
    first = augmenter.augment(TEXTS, 3, seed=7)
    assert first == augmenter.augment(TEXTS, 3, seed=7)
    assert [t for _, t in first] != [t for _, t in augmenter.augment(TEXTS, 3, seed=8)]
    # copy c of text i depends on (seed, i, c) only: the same text alone gives the same copies
    alone = augmenter.augment(TEXTS[:1], 3, seed=7)
    assert alone == first[:3]
    assert [i for i, _ in first] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_operations_happen_and_neighbours_are_real_words(augmenter):
    out = [t for _, t in augmenter.augment(TEXTS * 10, 2, seed=0)]
    assert any("[MASK]" in t for t in out)
    assert any(len(t.split()) <= 5 for t in out)  # n-gram sampling
    originals = {w.lower() for t in TEXTS for w in t.replace(".", " ").split()}
    replaced = {w for t in out for w in t.split() if w.isalpha() and w.lower() not in originals}
    assert replaced  # embedding-neighbour replacements
    neighbours = augmenter._neighbours["monday"]
    assert "tuesday" in neighbours or "sunday" in neighbours, neighbours


def test_no_replacement_without_a_table():
    plain = Augmenter("[MASK]", config=AugmentConfig(p_mask=0.0, p_replace=1.0, p_ngram=0.0))
    assert [t for _, t in plain.augment(["a b c"], 2, 0)] == ["a b c", "a b c"]
    with pytest.raises(ValueError):
        AugmentConfig(p_mask=0.6, p_replace=0.6)


def test_augmented_copies_never_carry_or_change_a_human_label(augmenter):
    examples = [Example(TEXTS[0], label=2, soft=np.array([0.1, 0.2, 0.6, 0.1])), Example(TEXTS[1], label=1),
                Example(TEXTS[2], soft=np.array([0.25] * 4))]
    before = [(e.text, e.label, None if e.soft is None else e.soft.copy()) for e in examples]
    new, stats = augment_examples(examples, augmenter, 4, seed=3)
    after = [(e.text, e.label, e.soft) for e in examples]
    assert [(t, lab) for t, lab, _ in before] == [(t, lab) for t, lab, _ in after]
    assert np.array_equal(before[0][2], after[0][2]) and after[1][2] is None
    assert new and all(e.label is None and e.labels is None and e.soft is None for e in new)
    assert not {e.text for e in new} & set(TEXTS) and len({e.text for e in new}) == len(new)
    assert stats.produced == len(new) and stats.copies == 4 and stats.source_texts == 3
