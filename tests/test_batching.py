"""service.batching: length-sorted batches, and micro-batching of concurrent callers on a real ONNX Runtime engine."""

import threading
import time

import numpy as np
import pytest

from service.batching import MicroBatcher, QueueFull, SequenceRunner, plan_batches
from service.engines.onnxruntime import OnnxRuntimeEngine
from service.onnx_export import onnx_for
from service.sources import resolve_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(tiny_model_dir, cache_dir):
    engine = OnnxRuntimeEngine(onnx_for(resolve_model(str(tiny_model_dir)), cache_dir))
    yield engine
    engine.close()


def sequences(n, seed):
    rng = np.random.default_rng(seed)
    return [[101, *rng.integers(1000, 5000, rng.integers(3, 40)).tolist(), 102] for _ in range(n)]


def test_concurrent_callers_share_batches_and_get_their_own_rows(engine):
    direct = SequenceRunner(engine, batch_size=16, pad_id=0)
    batcher = MicroBatcher(engine, batch_size=16, pad_id=0, max_wait_ms=300)
    jobs = [sequences(3, seed) for seed in range(8)]  # eight small requests of 3 pairs
    results, start = [None] * len(jobs), threading.Barrier(len(jobs))

    def call(i):
        start.wait()
        results[i] = batcher(jobs[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for job, got in zip(jobs, results):
        np.testing.assert_allclose(got, direct(job), atol=1e-5)  # padding to other requests' lengths changes nothing
    assert batcher.stats["jobs"] == 8 and batcher.stats["max_jobs_per_round"] > 1
    assert batcher.stats["batches"] < 8  # fewer forward passes than requests
    batcher.close()


def test_a_full_queue_refuses_instead_of_growing(engine):
    batcher = MicroBatcher(engine, batch_size=8, pad_id=0, max_wait_ms=2000, max_queue=5)
    first = threading.Thread(target=batcher, args=(sequences(4, 0),))  # 4 < 8: it waits for company
    first.start()
    deadline = time.monotonic() + 5
    while batcher._queued == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    with pytest.raises(QueueFull, match="queued"):
        batcher(sequences(2, 1))
    first.join()
    assert batcher.stats["rejected"] == 1
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher(sequences(1, 2))


def test_engine_errors_reach_every_waiting_caller(engine):
    batcher = MicroBatcher(engine, batch_size=4, pad_id=0, max_wait_ms=1)
    with pytest.raises(Exception):
        batcher([[101, 10**9, 102]])  # an id outside the vocabulary: the engine raises
    assert batcher(sequences(2, 3)).shape[0] == 2  # and the batcher keeps serving
    batcher.close()


@pytest.mark.parametrize("cap", [None, 64, 200, 1000])
def test_plan_batches_sorts_caps_rows_and_tokens_and_covers_every_sequence_once(cap):
    lengths = np.random.default_rng(cap or 0).integers(1, 120, 300).tolist() + [150, 3]
    plan = plan_batches(lengths, batch_size=32, max_batch_tokens=cap)
    flat = np.concatenate(plan)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths)  # one length-sorted pass: minimal padding
    for batch in plan:
        assert 1 <= len(batch) <= 32
        padded = len(batch) * max(lengths[i] for i in batch)
        assert cap is None or padded <= cap or len(batch) == 1  # a sequence over the cap runs alone
    if cap is not None:  # greedy: a batch stops only where one more row would pass a cap
        for batch, following in zip(plan, plan[1:]):
            assert len(batch) == 32 or (len(batch) + 1) * lengths[following[0]] > cap


def test_a_token_cap_splits_long_batches_without_changing_any_output(engine):
    seen = []

    def recording(inputs):
        seen.append(inputs["input_ids"].shape)
        return engine(inputs)

    recording.input_names = engine.input_names
    rng = np.random.default_rng(3)
    jobs = [[101, *rng.integers(1000, 5000, n).tolist(), 102] for n in rng.integers(3, 46, 40)]
    capped = SequenceRunner(recording, batch_size=16, pad_id=0, max_batch_tokens=256)(jobs)
    assert all(rows * width <= 256 for rows, width in seen) and len(seen) > -(-40 // 16)
    np.testing.assert_allclose(capped, SequenceRunner(engine, batch_size=16, pad_id=0)(jobs), atol=1e-5)


def test_the_token_cap_applies_to_dynamic_shape_engines_only(minilm_dir, cache_dir):
    """ZSC_MAX_BATCH_TOKENS reaches the runner of an ONNX Runtime model; a DeepSparse model gets none (its static
    buckets fix its memory, and a call cut below its 8-row bucket would be padded back up to 8 rows)."""
    from service.batching import engine_token_cap
    from service.config import Settings
    from service.loader import load_model

    assert engine_token_cap(1024, "onnxruntime") == 1024 and engine_token_cap(0, "onnxruntime") is None
    assert engine_token_cap(1024, "deepsparse") is None
    common = dict(model="none", embedding_model=str(minilm_dir), cache_dir=cache_dir, max_batch_tokens=512,
                  calibrate=False)
    served = load_model(Settings(engine="onnxruntime", **common), "embedding")
    try:
        assert served.runner.max_batch_tokens == 512 and served.runner.describe()["max_batch_tokens"] == 512
    finally:
        served.close()
    pytest.importorskip("deepsparse")
    served = load_model(Settings(engine="deepsparse", deepsparse_compile="lazy", **common), "embedding")
    try:
        assert served.engine.name == "deepsparse" and served.runner.max_batch_tokens is None
    finally:
        served.close()
