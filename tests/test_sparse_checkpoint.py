"""service.sparse_checkpoint: bitmask compression, tensors shared with the dense base, materialization."""

import json

import numpy as np
import pytest

from service.sparse_checkpoint import (
    SparseCheckpointError,
    compress,
    decompress,
    is_compact,
    load_tensors,
    materialize,
    save_compact,
)


def test_bitmask_round_trip_keeps_values_and_positions():
    rng = np.random.default_rng(0)
    array = rng.standard_normal((37, 53)).astype(np.float16)
    array[rng.random(array.shape) < 0.8] = 0
    parts = compress(array)
    assert parts["values"].size == np.count_nonzero(array)
    assert parts["bitmask"].nbytes == -(-array.size // 8)
    np.testing.assert_array_equal(decompress(**parts), array)
    with pytest.raises(SparseCheckpointError, match="non-zeros"):
        decompress(parts["values"][:-1], parts["bitmask"], parts["shape"])


@pytest.fixture()
def pruned_copy(tiny_model_dir, tmp_path):
    """A pruned version of the tiny model (half of each encoder Linear zeroed, one bias changed) saved compactly."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    dense_dir = tmp_path / "dense"
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    model.save_pretrained(dense_dir)  # the base: same weights as the tiny model
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and ".encoder." in f".{name}":
                module.weight[:, ::2] = 0
        model.classifier.bias.add_(1.0)
    out = tmp_path / "pruned"
    storage = save_compact({k: v.numpy() for k, v in model.state_dict().items()}, out, base_dir=dense_dir,
                           dtype="float32")
    model.config.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return model, out, dense_dir, storage


def test_compact_checkpoint_shares_untouched_tensors_and_restores_everything(pruned_copy, tmp_path):
    model, out, dense_dir, storage = pruned_copy
    assert is_compact(out) and not (out / "model.safetensors").exists()
    assert "bert.embeddings.word_embeddings.weight" in storage["shared"]
    assert "classifier.bias" not in storage["shared"]  # changed, so stored
    assert any("intermediate.dense.weight" in n for n in storage["compressed"])
    assert storage["stored_bytes"] < storage["dense_bytes"]
    meta = json.loads((out / "sparse_model.json").read_text())
    assert meta["base_model"] == "../dense"
    restored = load_tensors(out)
    for name, tensor in model.state_dict().items():
        np.testing.assert_array_equal(restored[name], tensor.numpy(), err_msg=name)


def test_materialized_directory_loads_with_transformers(pruned_copy, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification

    model, out, _, _ = pruned_copy
    full = materialize(out, tmp_path / "cache")
    assert materialize(out, tmp_path / "cache") == full  # built once
    reloaded = AutoModelForSequenceClassification.from_pretrained(full).eval()
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model.eval()(input_ids=ids).logits)


def test_a_changed_base_is_refused_with_the_reason(pruned_copy, tmp_path):
    from safetensors.numpy import load_file, save_file

    from service.sources import ModelSourceError, resolve_model

    _, out, dense_dir, _ = pruned_copy
    tensors = load_file(str(dense_dir / "model.safetensors"))
    tensors["bert.embeddings.word_embeddings.weight"] = tensors["bert.embeddings.word_embeddings.weight"] + 1
    save_file(tensors, str(dense_dir / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(SparseCheckpointError, match="differs from the one this model was pruned with"):
        load_tensors(out)
    with pytest.raises(ModelSourceError, match="cannot read the compact sparse model"):
        resolve_model(str(out), cache_dir=tmp_path / "cache2")
