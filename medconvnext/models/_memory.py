"""Which memory format to train and infer in: ``channels_last_3d`` where it is measured to be faster.

Measured on CPU (torch 2.13, 2 threads, bench/bench_train_step.py and the notes in the issue): a depthwise
7³ Conv3d forward + backward is 2.5-4x faster in ``channels_last_3d`` (oneDNN) than in the default
contiguous layout, and the ConvNeXt block's Linear layers then run on a channels-last view without a copy.
The trainer calls ``model.to(memory_format=fmt)`` and ``x.contiguous(memory_format=fmt)``.
"""

from __future__ import annotations

import torch
from torch import nn


def preferred_memory_format(model: nn.Module, device: torch.device | str) -> torch.memory_format:
    """``torch.channels_last_3d`` for models with 3D convolutions on CPU or CUDA, else contiguous."""
    device = torch.device(device)
    has_conv3d = any(isinstance(m, nn.Conv3d) for m in model.modules())
    if has_conv3d and device.type in ("cpu", "cuda"):
        return torch.channels_last_3d
    return torch.contiguous_format


def to_memory_format(model: nn.Module, x: torch.Tensor, fmt: torch.memory_format) -> tuple[nn.Module, torch.Tensor]:
    """Convert ``model`` (in place) and return ``x`` in ``fmt``; 5D inputs only for channels_last_3d."""
    model = model.to(memory_format=fmt)
    return model, x.contiguous(memory_format=fmt)
