"""The global pooling of a classifier's last feature map: average (the families' default) or max.

Why max exists (``bench/mil_pooling.py``, docs/benchmarks.md): a small finding fills a few voxels of a patch, so the
average over the patch's feature map dilutes it by the map's size (a 6 mm nodule in a 32³ patch at 2.4 mm is one
cell of an 8³ map: 1/512), and neither whole-volume training nor attention MIL finds it from volume labels. The
maximum keeps the strongest local response: global max pooling for weakly supervised localisation (Oquab, Bottou,
Laptev & Sivic, "Is object localization for free?", CVPR 2015); timm's ``global_pool="max"``.
"""

from __future__ import annotations

import torch

GLOBAL_POOLS = ("avg", "max")


def check_global_pool(mode: str) -> str:
    """``mode`` if it is one of :data:`GLOBAL_POOLS`. Raises ValueError otherwise."""
    if mode not in GLOBAL_POOLS:
        raise ValueError(f"global_pool must be one of {', '.join(GLOBAL_POOLS)}, got {mode!r}")
    return mode


def global_pool(features: torch.Tensor, mode: str) -> torch.Tensor:
    """(N, C, D, H, W) feature map -> (N, C): the mean (``"avg"``) or the maximum (``"max"``) over D, H, W."""
    if mode == "max":
        return features.amax(dim=(2, 3, 4))
    return features.mean(dim=(2, 3, 4))
