"""train.losses against values computed by hand on small tensors."""

import math

import pytest
import torch

from train.losses import (
    binary_soft_label_loss,
    distillation_loss,
    logit_mse_loss,
    soft_label_loss,
    soften,
)


def test_distillation_loss_is_t_squared_kl_of_the_softened_distributions():
    student, teacher, T = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[0.0, 2.0, 0.0]]), 2.0
    p_t = [math.exp(x / T) for x in (0.0, 2.0, 0.0)]
    p_t = [x / sum(p_t) for x in p_t]
    p_s = [math.exp(x / T) for x in (1.0, 0.0, -1.0)]
    p_s = [x / sum(p_s) for x in p_s]
    kl = sum(t * math.log(t / s) for t, s in zip(p_t, p_s))
    assert distillation_loss(student, teacher, T).item() == pytest.approx(T * T * kl, rel=1e-5)
    assert distillation_loss(teacher, teacher, T).item() == pytest.approx(0.0, abs=1e-7)


def test_soft_label_loss_takes_probabilities_and_averages_over_the_batch():
    student = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    target = torch.tensor([[0.9, 0.1], [0.5, 0.5]])
    kl0 = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    q = 1 / (1 + math.exp(-2.0))
    kl1 = 0.5 * math.log(0.5 / q) + 0.5 * math.log(0.5 / (1 - q))
    assert soft_label_loss(student, target, 1.0).item() == pytest.approx((kl0 + kl1) / 2, rel=1e-5)
    with pytest.raises(ValueError, match="shape"):
        soft_label_loss(student, torch.ones(2, 3) / 3, 1.0)
    with pytest.raises(ValueError, match="temperature"):
        soft_label_loss(student, target, 0.0)


def test_soften_flattens_with_a_temperature_above_one():
    p = torch.tensor([[0.8, 0.2]])
    q = soften(p, 2.0)
    assert q[0, 0].item() == pytest.approx(math.sqrt(0.8) / (math.sqrt(0.8) + math.sqrt(0.2)), rel=1e-6)
    assert torch.allclose(soften(p, 1.0), p)


def test_binary_soft_labels_are_per_label_bce_not_a_softmax():
    logits = torch.tensor([[0.0, 2.0]])
    target = torch.tensor([[0.9, 0.9]])  # both labels hold: impossible under a softmax
    s = 1 / (1 + math.exp(-2.0))
    expected = -(0.9 * math.log(0.5) + 0.1 * math.log(0.5) + 0.9 * math.log(s) + 0.1 * math.log(1 - s)) / 2
    assert binary_soft_label_loss(logits, target).item() == pytest.approx(expected, rel=1e-5)


def test_logit_mse():
    assert logit_mse_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 4.0]])).item() == pytest.approx(2.5)
