"""3D ConvMixer (Trockman & Kolter, "Patches Are All You Need?"), adapted to volumes.

Architecture as in the paper: patch embedding Conv3d (kernel = stride = p) -> GELU -> BatchNorm3d;
``depth`` x [Residual(depthwise Conv3d k, "same" padding -> GELU -> BN) -> pointwise Conv3d -> GELU -> BN];
global average pool; Linear. PyTorch's default initialisation is kept, as in the reference code.

Choices for 3D (the 2D paper models see 224² images with p = 7, i.e. a 32² token grid, and k = 7-9):

- Volumes default to 64³, and a 3D grid grows cubically, so we use p = 4 (a 16³ = 4096-token grid) for the
  256/512/768-wide variants and p = 8 (8³ = 512 tokens) for the 1536-wide one, whose activations at
  p = 4 would need several GB per sample.
- A depthwise k³ kernel costs k³ weights and multiply-adds per voxel rather than k², and the paper's kernels
  span about a quarter of the grid (9 of 32); k = 5 on the 16³ grid (and on the 8³ grid) keeps that ratio.
- ``convmixer_768_32`` uses ReLU, as the paper's (and timm's) 768/32 model does.
- ``convmixer_128_4`` is a small CPU-sized variant (p = 4, k = 5) for tests and quick experiments.

Patch and kernel sizes accept per-axis values, e.g. ``patch_size=(1, 4, 4)`` for thick slices.
The minimum input is one patch: ``min_input_size == patch_size``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from medconvnext.layers import as_triple, check_global_pool, check_input_size, global_pool
from medconvnext.layers.shapes import Triple
from medconvnext.models._registry import register_model

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


class Residual(nn.Module):
    """``x + fn(x)``."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fn(x)


class MixerLayer(nn.Sequential):
    """Residual spatial mixing (depthwise conv) followed by channel mixing (pointwise conv)."""

    def __init__(self, dim: int, kernel_size: Triple, act: type[nn.Module]) -> None:
        super().__init__(
            Residual(
                nn.Sequential(nn.Conv3d(dim, dim, kernel_size, groups=dim, padding="same"), act(), nn.BatchNorm3d(dim))
            ),
            nn.Conv3d(dim, dim, kernel_size=1),
            act(),
            nn.BatchNorm3d(dim),
        )


class ConvMixer3d(nn.Module):
    """3D ConvMixer classifier for (N, C, D, H, W) volumes."""

    def __init__(
        self,
        num_classes: int = 2,
        in_channels: int = 1,
        dim: int = 256,
        depth: int = 8,
        patch_size: int | Sequence[int] = 4,
        kernel_size: int | Sequence[int] = 5,
        act: str = "gelu",
        head_dropout: float = 0.0,
        grad_checkpointing: bool = False,
        global_pool: str = "avg",
    ) -> None:
        """
        Args:
            dim, depth: channels (constant through the network) and number of mixer layers.
            patch_size: patch embedding kernel = stride; int or (D, H, W).
            kernel_size: depthwise kernel of the mixer layers; int or (D, H, W); "same" padding.
            act: ``"gelu"`` or ``"relu"``.
            global_pool: ``"avg"`` (the default) or ``"max"``: how the last feature map becomes one vector per
                volume (:mod:`medconvnext.layers.pooling`; max keeps a small finding's local response).
            grad_checkpointing: recompute each mixer layer's activations in backward to save memory.
        """
        super().__init__()
        if act not in _ACTIVATIONS:
            raise ValueError(f"act must be one of {tuple(_ACTIVATIONS)}, got {act!r}")
        activation = _ACTIVATIONS[act]
        patch = as_triple(patch_size, "patch_size")
        kernel = as_triple(kernel_size, "kernel_size")
        self.num_classes = num_classes
        self.num_features = dim
        self.grad_checkpointing = grad_checkpointing
        self.min_input_size: Triple = patch

        self.stem = nn.Sequential(nn.Conv3d(in_channels, dim, patch, stride=patch), activation(), nn.BatchNorm3d(dim))
        self.blocks = nn.Sequential(*(MixerLayer(dim, kernel, activation) for _ in range(depth)))
        self.global_pool = check_global_pool(global_pool)
        self.head_drop = nn.Dropout(head_dropout)
        self.head = nn.Linear(dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map after the last mixer layer, (N, dim, D/p, H/p, W/p)."""
        check_input_size(x, self.min_input_size, type(self).__name__)
        x = self.stem(x)
        for block in self.blocks:
            if self.grad_checkpointing and x.requires_grad:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global pool (``global_pool``: average or max) over D, H, W -> (dropout) -> Linear."""
        x = global_pool(features, self.global_pool)
        return x if pre_logits else self.head(self.head_drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model("convmixer")
def convmixer_128_4(**kwargs) -> ConvMixer3d:
    """Small CPU-sized ConvMixer: dim 128, depth 4, p = 4, k = 5."""
    return ConvMixer3d(**{"dim": 128, "depth": 4, "patch_size": 4, "kernel_size": 5, **kwargs})


@register_model("convmixer")
def convmixer_256_8(**kwargs) -> ConvMixer3d:
    """ConvMixer-256/8: dim 256, depth 8, p = 4, k = 5."""
    return ConvMixer3d(**{"dim": 256, "depth": 8, "patch_size": 4, "kernel_size": 5, **kwargs})


@register_model("convmixer")
def convmixer_512_12(**kwargs) -> ConvMixer3d:
    """ConvMixer-512/12: dim 512, depth 12, p = 4, k = 5."""
    return ConvMixer3d(**{"dim": 512, "depth": 12, "patch_size": 4, "kernel_size": 5, **kwargs})


@register_model("convmixer")
def convmixer_768_32(**kwargs) -> ConvMixer3d:
    """ConvMixer-768/32: dim 768, depth 32, p = 4, k = 5, ReLU (as in the paper)."""
    return ConvMixer3d(**{"dim": 768, "depth": 32, "patch_size": 4, "kernel_size": 5, "act": "relu", **kwargs})


@register_model("convmixer")
def convmixer_1536_20(**kwargs) -> ConvMixer3d:
    """ConvMixer-1536/20: dim 1536, depth 20, p = 8, k = 5."""
    return ConvMixer3d(**{"dim": 1536, "depth": 20, "patch_size": 8, "kernel_size": 5, **kwargs})
