"""Exponential moving average (EMA) of a model's weights, evaluated and saved instead of the raw weights.

Why not ``torch.optim.swa_utils.AveragedModel`` (with ``get_ema_multi_avg_fn`` or a custom ``multi_avg_fn``):

- its first update copies the weights, where this EMA's warm-up already averages (decay 0.1 at the first step);
- its multi-average function gets the update count as a tensor on the device, so a warm-up decay computed from
  it costs a host-device synchronisation per step;
- ``use_buffers=False`` copies BatchNorm's running statistics instead of averaging them; ``use_buffers=True``
  averages the integer ``num_batches_tracked`` too, which this EMA copies;
- ``get_ema_multi_avg_fn`` updates with ``lerp``, which rounds differently from the multiply-add below, so seeded
  runs would no longer reproduce earlier ones, and its state (``n_averaged``, a ``module.`` prefix) would not load
  the EMA of training states written before.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["ModelEma", "has_batchnorm", "recompute_batchnorm"]


class ModelEma:
    """A frozen copy of the model whose floating-point weights and buffers track ``d * ema + (1 - d) * w``.

    With ``warmup`` the decay ramps up as ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates (as
    TensorFlow's and timm's EMA do): without it a short run's average (0.999 = ~1000 steps) would still be
    dominated by the random initialisation. Integer buffers (e.g. BatchNorm's ``num_batches_tracked``) are
    copied as they are.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update uses."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step toward ``model``'s current weights."""
        decay = self.current_decay()
        self.updates += 1
        current = model.state_dict()
        averaged, sources = [], []
        for name, value in self.module.state_dict().items():
            source = current[name].detach()
            if value.dtype.is_floating_point:
                averaged.append(value)
                sources.append(source.to(value.dtype))
            else:
                value.copy_(source)
        if averaged:
            # the same multiply-add as one tensor at a time, in a few batched kernels (hundreds of tensors: on a
            # GPU the per-tensor launches cost more than the arithmetic)
            torch._foreach_mul_(averaged, decay)
            torch._foreach_add_(averaged, sources, alpha=1.0 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` has BatchNorm layers (running statistics that an EMA would average)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, inputs: Iterable[torch.Tensor]) -> int:
    """Replace ``model``'s BatchNorm running statistics by their mean over the batches of ``inputs``.

    Why: an EMA's BatchNorm buffers are averages of the trained model's running statistics, which were measured
    for the trained weights, not for the averaged ones. While the weights move fast (early epochs, peak learning
    rate) the two disagree and the EMA's probabilities are off: a ConvNeXt with a full-resolution BatchNorm
    pre-stem had val loss 0.68 and accuracy 0.58 at its selected epoch, 0.38 and 0.85 with recomputed statistics
    (docs/benchmarks.md). The method is SWA's (Izmailov et al. 2018, ``torch.optim.swa_utils.update_bn``), except
    that only the BatchNorm layers run in training mode: dropout and drop path stay off and draw no random numbers,
    so the training run's random stream is the same with or without it.

    Args:
        inputs: model inputs (N, C, D, H, W), already on the model's device and in its memory format.

    Returns:
        The number of batches used (0: the model has no BatchNorm, or ``inputs`` was empty; nothing changed).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum)
             for m in norms]
    was_training = model.training
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative mean over the batches
        m.train()
    batches = 0
    try:
        for x in inputs:
            model(x)
            batches += 1
    finally:
        for m, (mean, var, tracked, momentum) in zip(norms, saved, strict=True):
            m.momentum = momentum
            if batches == 0:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(tracked)
        model.train(was_training)
    return batches
