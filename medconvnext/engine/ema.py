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

import torch
from torch import nn


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
