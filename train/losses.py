"""Training objectives shared by the sparsification (teacher -> pruned teacher) and the students.

- hard labels: cross-entropy, or for multi-label binary cross-entropy per label;
- soft labels: the teacher's distribution softened by a temperature, ``T^2 * KL(teacher/T || student/T)``
  (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network", arXiv:1503.02531), or for multi-label
  per-label binary targets with binary cross-entropy;
- MSE between student and teacher logits (Tang et al. 2019, "Distilling Task-Specific Knowledge from BERT
  into Simple Neural Networks", arXiv:1903.12136).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, mean over the batch (Hinton et al. 2015).

    The ``T^2`` factor keeps the gradient scale independent of the temperature.

    Args:
        student_logits, teacher_logits: ``(batch, n_classes)``.
        temperature: ``T > 0``.

    Raises:
        ValueError: ``temperature <= 0`` or shapes that differ.
    """
    return soft_label_loss(student_logits, torch.log_softmax(teacher_logits.float() / temperature, dim=-1),
                           temperature, log_target=True)


def soft_label_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float, *,
                    log_target: bool = False) -> torch.Tensor:
    """``T^2 * KL(q || softmax(student/T))`` against a teacher distribution ``q`` given as probabilities.

    ``q`` is used as given (the teacher's scores are already a distribution; to soften stored scores ``p``
    by ``T`` pass ``soften(p, T)``). Mean over the batch.

    Args:
        student_logits: ``(batch, n_classes)``.
        teacher_probs: ``(batch, n_classes)`` rows summing to 1 (log-probabilities with ``log_target``).
        temperature: ``T > 0``, divides the student's logits.

    Raises:
        ValueError: ``temperature <= 0`` or shapes that differ.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.shape != teacher_probs.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher scores "
                         f"{tuple(teacher_probs.shape)} differ in shape")
    log_p_student = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    target = teacher_probs.float() if log_target else teacher_probs.float().clamp_min(1e-12).log()
    kl = F.kl_div(log_p_student, target, reduction="batchmean", log_target=True)
    return kl * temperature ** 2


def soften(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Re-temper a distribution given as probabilities: ``softmax(log(p) / T)`` (``T > 1`` flattens it).

    Scores exported from the zero-shot service are probabilities, not logits; their log is the logit up to
    a per-row constant, which the softmax ignores.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.softmax(probs.float().clamp_min(1e-12).log() / temperature, dim=-1)


def binary_soft_label_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """Multi-label soft labels: binary cross-entropy of each label's sigmoid against the teacher's per-label
    probability (independent yes/no per label, no softmax across labels); mean over batch and labels."""
    if student_logits.shape != teacher_probs.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher scores "
                         f"{tuple(teacher_probs.shape)} differ in shape")
    return F.binary_cross_entropy_with_logits(student_logits.float(), teacher_probs.float().clamp(0, 1))


def logit_mse_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared error between logits (Tang et al. 2019), mean over batch and classes."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    return F.mse_loss(student_logits.float(), teacher_logits.float())
