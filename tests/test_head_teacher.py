"""train/head_teacher.py: a saved adapted head scores texts with one pass of its own (real, packaged) sentence
encoder, reuses stored embeddings, reorders its columns to the student's labels, and refuses another encoder."""

import numpy as np
import pytest

from service.head import AdaptiveHead
from train.head_teacher import HeadTeacher, HeadTeacherError

LABELS = ["world news", "sports", "business", "science and technology"]
TEXTS = ["Oil prices rose after saboteurs blew up a pipeline in Iraq.", "The striker scored twice in the cup final.",
         "Shares of the chip maker fell after a weak forecast.", "Scientists found water ice near the moon's pole.",
         "The senate passed the budget bill on Tuesday.", "A new smartphone chip doubles battery life."]


@pytest.fixture(scope="module")
def encoder():
    from pool.scorers import LocalScorer

    scorer = LocalScorer(LABELS, "This news article is about {}.", method="embedding", engine="onnxruntime")
    vectors = scorer.embed(TEXTS)
    yield scorer, vectors
    scorer.close()


def _head(tmp_path, fingerprint, name="head"):
    rng = np.random.default_rng(0)
    head = AdaptiveHead(LABELS, rng.normal(size=(4, 384)), rng.normal(size=4), 0.7,
                        {"model_id": "packaged:all-MiniLM-L6-v2", "fingerprint": fingerprint, "dim": 384},
                        "rev", {"hypothesis_template": "This news article is about {}.", "mode": "pseudo-labels"})
    return head, head.save(tmp_path / name)


def test_scores_are_the_head_on_its_encoder_in_the_students_label_order(encoder, tmp_path):
    scorer, vectors = encoder
    head, directory = _head(tmp_path, scorer.encoder["fingerprint"])
    teacher = HeadTeacher(directory, engine="onnxruntime")
    try:
        expected = head.predict_proba(vectors)
        np.testing.assert_allclose(teacher.scores(TEXTS), expected, atol=1e-4)
        assert teacher.encoder_passes == len(TEXTS) and teacher.cached_texts == 0 and teacher.seconds > 0
        reordered = list(reversed(LABELS))
        np.testing.assert_allclose(teacher.scores(TEXTS, reordered), expected[:, ::-1], atol=1e-4)
        with pytest.raises(HeadTeacherError, match="knows labels"):
            teacher.scores(TEXTS, ["world news", "sports"])
    finally:
        teacher.close()


def test_stored_embeddings_are_reused_and_checked(encoder, tmp_path):
    from pool.store import PoolStore, shard_table

    scorer, vectors = encoder
    store = PoolStore(tmp_path / "store")
    store.write_shard("0", shard_table([str(i) for i in range(len(TEXTS))], TEXTS, np.full((len(TEXTS), 4), 0.25),
                                       vectors, LABELS))
    store.write_meta({"labels": LABELS, "encoder": scorer.encoder})
    head, directory = _head(tmp_path, scorer.encoder["fingerprint"])
    teacher = HeadTeacher(directory, embedding_stores=[store.root])
    np.testing.assert_allclose(teacher.scores(TEXTS), head.predict_proba(vectors.astype(np.float16).astype(np.float32)),
                               atol=1e-4)
    assert teacher.encoder_passes == 0 and teacher.cached_texts == len(TEXTS)
    _, other = _head(tmp_path, "another-encoder", "other")
    with pytest.raises(HeadTeacherError, match="come from encoder"):
        HeadTeacher(other, embedding_stores=[store.root])


def test_a_head_of_another_encoder_or_no_head_is_refused(encoder, tmp_path):
    _, directory = _head(tmp_path, "another-encoder")
    teacher = HeadTeacher(directory, engine="onnxruntime")
    try:
        with pytest.raises(HeadTeacherError, match="fitted on encoder another-encoder"):
            teacher.scores(TEXTS[:2])
    finally:
        teacher.close()
    with pytest.raises(HeadTeacherError, match="not a head directory"):
        HeadTeacher(tmp_path / "nothing")
