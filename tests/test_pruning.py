"""train.pruning: the cubic schedule (Zhu & Gupta 2017, eq. 1), magnitude masks, and masks that stay put."""

import pytest
import torch

from train.pruning import MagnitudePruner, PruningSchedule, cubic_sparsity, prunable_linears


def test_cubic_schedule_matches_the_paper_formula():
    final, t0, t1 = 0.8, 100, 1100
    for step in (100, 350, 600, 1000, 1100):
        expected = final + (0.0 - final) * (1 - (step - t0) / (t1 - t0)) ** 3
        assert cubic_sparsity(step, final=final, start_step=t0, end_step=t1) == pytest.approx(expected)
    assert cubic_sparsity(50, final=final, start_step=t0, end_step=t1) == 0.0
    assert cubic_sparsity(5000, final=final, start_step=t0, end_step=t1) == final
    # prunes fast early, slowly late: half the run reaches 7/8 of the target
    assert cubic_sparsity(600, final=final, start_step=t0, end_step=t1) == pytest.approx(final * 7 / 8)


def test_schedule_refuses_impossible_numbers():
    with pytest.raises(ValueError):
        PruningSchedule(final_sparsity=1.0, start_step=0, end_step=10)
    with pytest.raises(ValueError):
        PruningSchedule(final_sparsity=0.5, start_step=10, end_step=5)
    with pytest.raises(ValueError):
        PruningSchedule(final_sparsity=0.5, start_step=0, end_step=5, scope="block")


def tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=64, num_labels=3))


def test_only_the_encoder_linears_are_pruned_and_masks_are_exact():
    model = tiny_bert()
    layers = prunable_linears(model)
    assert len(layers) == 12  # 2 blocks x (q, k, v, attention output, intermediate, output)
    assert not any("pooler" in n or "classifier" in n for n in layers)
    original = {name: m.weight.detach().clone() for name, m in layers.items()}
    pruner = MagnitudePruner(model, PruningSchedule(final_sparsity=0.75, start_step=0, end_step=4, update_every=1))
    targets = [pruner.update(step) for step in range(5)]
    assert targets[0] is None and targets[-1] == 0.75
    measured = pruner.sparsity()
    assert all(v == pytest.approx(0.75, abs=1 / 1024) for k, v in measured.items())
    assert float((model.classifier.weight == 0).float().mean()) == 0.0
    # the survivors are the largest weights of each layer, untouched; the rest are exactly zero
    for name, module in layers.items():
        mask = pruner.masks[name]
        assert float(original[name][mask].abs().min()) >= float(original[name][~mask].abs().max())
        assert torch.equal(module.weight.detach()[mask], original[name][mask])
        assert float(module.weight.detach()[~mask].abs().max()) == 0.0


def test_pruned_weights_stay_zero_through_training_steps():
    model = tiny_bert()
    pruner = MagnitudePruner(model, PruningSchedule(final_sparsity=0.5, start_step=0, end_step=0))
    pruner.update(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(0, 100, (4, 8))
    for _ in range(3):
        loss = model(input_ids=ids, labels=torch.tensor([0, 1, 2, 0])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        pruner.apply()
    assert pruner.sparsity()["all"] == pytest.approx(0.5, abs=1 / 512)


def test_global_scope_reaches_the_overall_target_with_uneven_layers():
    model = tiny_bert()
    with torch.no_grad():
        model.bert.encoder.layer[0].intermediate.dense.weight.mul_(100)  # a layer of large weights
    pruner = MagnitudePruner(model, PruningSchedule(final_sparsity=0.6, start_step=0, end_step=0, scope="global"))
    pruner.update(0)
    measured = pruner.sparsity()
    assert measured["all"] == pytest.approx(0.6, abs=0.01)
    assert measured["bert.encoder.layer.0.intermediate.dense"] < 0.1  # kept, being large


def test_masks_survive_a_checkpoint_round_trip():
    model = tiny_bert()
    pruner = MagnitudePruner(model, PruningSchedule(final_sparsity=0.5, start_step=0, end_step=0))
    pruner.update(0)
    restored = MagnitudePruner(model, pruner.schedule)
    restored.load_state_dict(pruner.state_dict())
    assert restored.current == 0.5
    assert all(torch.equal(restored.masks[k], pruner.masks[k]) for k in pruner.masks)
