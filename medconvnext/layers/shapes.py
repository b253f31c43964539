"""Per-axis size helpers and the input-size check every model runs first."""

from __future__ import annotations

from collections.abc import Sequence

import torch

Triple = tuple[int, int, int]


def as_triple(value: int | Sequence[int], name: str = "value") -> Triple:
    """Turn an int or a 3-sequence into a (D, H, W) tuple of ints."""
    if isinstance(value, int):
        return (value, value, value)
    values = tuple(int(v) for v in value)
    if len(values) != 3:
        raise ValueError(f"{name} must be an int or 3 ints (D, H, W), got {value!r}")
    return values  # type: ignore[return-value]


def check_input_size(x: torch.Tensor, min_size: Triple, model_name: str) -> None:
    """Fail before computing when a (N, C, D, H, W) input is smaller than the model allows."""
    if x.ndim != 5:
        raise ValueError(f"{model_name} expects a 5D tensor (N, C, D, H, W), got shape {tuple(x.shape)}")
    spatial = tuple(x.shape[2:])
    if any(s < m for s, m in zip(spatial, min_size, strict=True)):
        raise ValueError(
            f"{model_name}: input size {spatial} is smaller than the minimum {min_size} (D, H, W); "
            "pad the volume or choose a larger input_size"
        )
