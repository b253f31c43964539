"""Normalisation layers for channels-first 3D feature maps (N, C, D, H, W)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("groupnorm", "layernorm", "batchnorm", "channelnorm")


class LayerNorm3d(nn.LayerNorm):
    """The ConvNeXt paper's channels-first LayerNorm: normalises over C at each voxel.

    A voxel's output depends only on that voxel's channels, so normalising a crop
    equals cropping the normalised volume (GroupNorm(1) does not have this property).
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # permute to channels-last: a free view when x is in channels_last_3d memory format
        x = x.permute(0, 2, 3, 4, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 4, 1, 2, 3)


def make_norm3d(kind: str, num_channels: int, eps: float = 1e-6) -> nn.Module:
    """Return the channels-first norm named ``kind``.

    ``"groupnorm"`` is GroupNorm with one group (normalises over C, D, H, W jointly,
    the MetaFormer/PoolFormer norm: the product card's "GroupNorm-as-LayerNorm");
    ``"layernorm"`` is :class:`LayerNorm3d` (over C per voxel, as in the paper);
    ``"batchnorm"`` is BatchNorm3d (per channel over the batch: statistics shared across cases, running
    averages at inference; converted to SyncBatchNorm under DDP on CUDA);
    ``"channelnorm"`` is GroupNorm with one group per channel (each channel over D, H, W of one case: MedNeXt's
    3D norm, Roy et al. 2023, ``nnunet_mednext/network_architecture/mednextv1/blocks.py``).
    """
    if kind == "groupnorm":
        return nn.GroupNorm(1, num_channels, eps=eps)
    if kind == "layernorm":
        return LayerNorm3d(num_channels, eps=eps)
    if kind == "batchnorm":
        return nn.BatchNorm3d(num_channels, eps=eps)
    if kind == "channelnorm":
        return nn.GroupNorm(num_channels, num_channels, eps=eps)
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


class GRN3d(nn.Module):
    """Global Response Normalization (ConvNeXt V2, Woo et al. 2023, ``models/utils.py``) for channels-last 3D maps.

    Input and output (N, D, H, W, C). Per case and channel, G = L2 norm over D, H, W; N = G / mean_C(G);
    out = γ·(x·N) + β + x. γ and β start at zero, so the layer starts as the identity.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(num_channels))
        self.beta = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.linalg.vector_norm(x.float(), dim=(1, 2, 3), keepdim=True)
        n = g / (g.mean(dim=-1, keepdim=True) + self.eps)
        return self.gamma * (x * n.to(x.dtype)) + self.beta + x
