"""Gradual magnitude pruning (GMP) of an encoder's Linear weights, and the distillation loss that recovers it.

Schedule: Zhu & Gupta 2017, "To prune, or not to prune" (arXiv:1710.01878), eq. 1: from step ``t0`` to
``t0 + n*dt`` the target sparsity rises as

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3

and masks are recomputed every ``dt`` steps by weight magnitude; after ``t0 + n*dt`` the masks stay fixed
while training recovers the accuracy. As in "Prune Once for All" (Zafrir et al. 2021, arXiv:2111.05754) and
oBERT (Kurtic et al. 2022, arXiv:2203.07259), recovery uses knowledge distillation from the dense model's
logits (Hinton et al. 2015, arXiv:1503.02531) next to the hard labels.

Pruned weights are zero in the weight tensor itself (no masks kept in the saved model), so the exported
ONNX initializers carry the sparsity that DeepSparse exploits; :func:`measured_sparsity` reads it back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

#: Linear layers of a BERT-style encoder's transformer blocks: attention q/k/v/output and the two FFN layers.
#: The pooler and classifier stay dense (tiny, and the classifier carries the NLI decision).
ENCODER_LINEAR = re.compile(r"(^|\.)encoder\.layer\.\d+\.")


def cubic_sparsity(step: int, *, final: float, start_step: int, end_step: int, initial: float = 0.0) -> float:
    """Target sparsity at ``step`` of Zhu & Gupta's cubic schedule (0 before ``start_step``, ``final`` after ``end_step``).

    Raises:
        ValueError: sparsities outside [0, 1) or ``end_step < start_step``.
    """
    if not (0.0 <= initial <= final < 1.0):
        raise ValueError(f"need 0 <= initial ({initial}) <= final ({final}) < 1")
    if end_step < start_step:
        raise ValueError(f"end_step {end_step} is before start_step {start_step}")
    if step < start_step:
        return 0.0 if initial == 0.0 else initial
    if step >= end_step or end_step == start_step:
        return final
    progress = (step - start_step) / (end_step - start_step)
    return final + (initial - final) * (1.0 - progress) ** 3


def prunable_linears(model: torch.nn.Module, pattern: re.Pattern = ENCODER_LINEAR) -> dict[str, torch.nn.Linear]:
    """The Linear modules to prune, by qualified name: those of the encoder's transformer blocks."""
    return {name: module for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and pattern.search(name + ".")}


@dataclass(frozen=True)
class PruningSchedule:
    """When and how far to prune: masks updated every ``update_every`` steps between ``start_step`` and
    ``end_step``; ``scope`` ``layer`` gives every layer the same sparsity (Zhu & Gupta, Prune OFA),
    ``global`` ranks all prunable weights together (layers end up with different sparsities)."""

    final_sparsity: float
    start_step: int
    end_step: int
    update_every: int = 50
    initial_sparsity: float = 0.0
    scope: str = "layer"

    def __post_init__(self) -> None:
        cubic_sparsity(self.start_step, final=self.final_sparsity, start_step=self.start_step, end_step=self.end_step,
                       initial=self.initial_sparsity)  # validates the numbers
        if self.scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', not {self.scope!r}")
        if self.update_every < 1:
            raise ValueError("update_every must be >= 1")

    def target(self, step: int) -> float:
        return cubic_sparsity(step, final=self.final_sparsity, start_step=self.start_step, end_step=self.end_step,
                              initial=self.initial_sparsity)

    def is_update(self, step: int) -> bool:
        """Masks are recomputed at ``start_step``, every ``update_every`` steps after it, and at ``end_step``."""
        if step < self.start_step or step > self.end_step:
            return False
        return (step - self.start_step) % self.update_every == 0 or step == self.end_step


class MagnitudePruner:
    """Keeps binary masks over a model's prunable Linear weights and applies them.

    Usage in a training loop: ``pruner.update(step)`` before the forward pass (recomputes masks on the
    schedule's update steps) and ``pruner.apply()`` right after ``optimizer.step()`` (pruned weights back to
    exactly zero, whatever the optimizer's momentum did). Masks never revive a pruned weight: a pruned weight
    is zero, so it ranks last at every later update.

    Args:
        model: the model whose :func:`prunable_linears` are pruned.
        schedule: targets and update steps.
    """

    def __init__(self, model: torch.nn.Module, schedule: PruningSchedule):
        self.schedule = schedule
        self.layers = prunable_linears(model)
        if not self.layers:
            raise ValueError("the model has no encoder Linear layers to prune (expected names like "
                             "'encoder.layer.0.attention.self.query')")
        self.masks = {name: torch.ones_like(m.weight, dtype=torch.bool) for name, m in self.layers.items()}
        self.current = 0.0

    @torch.no_grad()
    def update(self, step: int) -> float | None:
        """Recompute the masks if ``step`` is an update step; returns the new target sparsity, else ``None``."""
        if not self.schedule.is_update(step):
            return None
        target = self.schedule.target(step)
        if target <= self.current and step != self.schedule.end_step:
            return None
        if self.schedule.scope == "layer":
            for name, module in self.layers.items():
                self.masks[name] = _magnitude_mask(module.weight.abs(), target)
        else:
            scores = torch.cat([m.weight.abs().flatten() for m in self.layers.values()])
            k = int(round(target * scores.numel()))
            threshold = torch.kthvalue(scores.float().cpu(), k).values.item() if k > 0 else -1.0
            for name, module in self.layers.items():
                self.masks[name] = module.weight.abs() > threshold
        self.current = target
        self.apply()
        return target

    @torch.no_grad()
    def apply(self) -> None:
        """Zero the pruned weights (call after every optimizer step)."""
        for name, module in self.layers.items():
            module.weight.mul_(self.masks[name].to(module.weight.dtype))

    def state_dict(self) -> dict:
        return {"masks": {k: v.cpu() for k, v in self.masks.items()}, "current": self.current}

    def load_state_dict(self, state: dict) -> None:
        device = next(iter(self.layers.values())).weight.device
        self.masks = {k: v.to(device) for k, v in state["masks"].items()}
        self.current = float(state["current"])

    def sparsity(self) -> dict[str, float]:
        """Measured fraction of exact zeros: overall (``"all"``) and per layer."""
        out, zeros, total = {}, 0, 0
        for name, module in self.layers.items():
            z = int((module.weight == 0).sum())
            out[name] = z / module.weight.numel()
            zeros, total = zeros + z, total + module.weight.numel()
        out["all"] = zeros / total
        return out


def _magnitude_mask(magnitude: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the ``1 - sparsity`` largest entries (ties broken by position, so exactly that many are pruned)."""
    k = int(round(sparsity * magnitude.numel()))
    mask = torch.ones(magnitude.numel(), dtype=torch.bool, device=magnitude.device)
    if k > 0:
        mask[torch.argsort(magnitude.flatten(), stable=True)[:k]] = False
    return mask.view_as(magnitude)

