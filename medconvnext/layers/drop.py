"""Stochastic depth (DropPath) with the linear per-block schedule of ConvNeXt."""

from __future__ import annotations

import torch
from torch import nn


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Drop whole residual branches: one Bernoulli mask per sample, scaled by 1/keep."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = x.new_empty(mask_shape).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    """Module form of :func:`drop_path`."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.rate, self.training)

    def extra_repr(self) -> str:
        return f"rate={self.rate:.3f}"


def drop_path_rates(max_rate: float, depths: tuple[int, ...] | list[int]) -> list[list[float]]:
    """Per-stage lists of rates, ``linspace(0, max_rate, sum(depths))`` over all blocks."""
    # device="cpu": the rates are plain floats, also when a model is built under torch.device("meta")
    flat = torch.linspace(0, max_rate, sum(depths), device="cpu").tolist()
    rates, start = [], 0
    for depth in depths:
        rates.append(flat[start : start + depth])
        start += depth
    return rates
