"""Exponential moving average (EMA) of a model's weights, evaluated and saved instead of the raw weights."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma:
    """A frozen copy of the model whose floating-point weights and buffers track ``decay * ema + (1 - decay) * w``.

    Integer buffers (e.g. BatchNorm's ``num_batches_tracked``) are copied as they are.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step toward ``model``'s current weights."""
        current = model.state_dict()
        for name, value in self.module.state_dict().items():
            source = current[name].detach()
            if value.dtype.is_floating_point:
                value.mul_(self.decay).add_(source.to(value.dtype), alpha=1.0 - self.decay)
            else:
                value.copy_(source)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
