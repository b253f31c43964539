"""3D ResNeXt (Xie et al., "Aggregated Residual Transformations"), after torchvision's ResNet.

Bottleneck: 1x1x1 conv -> BN -> ReLU -> grouped 3x3x3 conv (cardinality C, width d per group, the stride
sits here as in torchvision's "v1.5") -> BN -> ReLU -> 1x1x1 conv (4x expansion) -> BN, plus the shortcut
(1x1x1 strided conv + BN when the shape changes) and ReLU. Kaiming (fan_out) init for convs.

Two stems:

- ``stem="default"``: Conv3d 7³ stride 2 + max-pool 3³ stride 2 (total stride 32, ``min_input_size`` 32³).
- ``stem="small"``: Conv3d 3³ stride 1, no max-pool (total stride 8, ``min_input_size`` 8³), for
  28-32³ inputs such as MedMNIST 3D, where the default stem would leave a 1³ map.

``min_input_size`` is the total stride: the smallest input that gives the last stage at least one voxel
that is not made of padding alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from medconvnext.layers import check_global_pool, check_input_size, global_pool
from medconvnext.layers.shapes import Triple
from medconvnext.models._registry import register_model

STEMS = ("default", "small")


class Bottleneck(nn.Module):
    """ResNeXt bottleneck with a grouped 3x3x3 convolution."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int, groups: int, base_width: int) -> None:
        super().__init__()
        width = int(planes * base_width / 64) * groups
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv3d(in_planes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.conv2 = nn.Conv3d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm3d(width)
        self.conv3 = nn.Conv3d(width, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != out_planes:
            self.downsample = nn.Sequential(
                nn.Conv3d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm3d(out_planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


class ResNeXt3d(nn.Module):
    """3D ResNeXt classifier for (N, C, D, H, W) volumes."""

    def __init__(
        self,
        num_classes: int = 2,
        in_channels: int = 1,
        layers: Sequence[int] = (3, 4, 6, 3),
        groups: int = 32,
        width_per_group: int = 4,
        base_planes: int = 64,
        stem: str = "default",
        zero_init_residual: bool = False,
        head_dropout: float = 0.0,
        grad_checkpointing: bool = False,
        global_pool: str = "avg",
    ) -> None:
        """
        Args:
            layers: bottleneck blocks per stage (4 stages with strides 1, 2, 2, 2).
            groups, width_per_group: cardinality C and bottleneck width d (``resnext50_32x4d``: 32, 4).
            base_planes: planes of the first stage (doubling per stage; 64 in the paper).
            stem: ``"default"`` (7³ stride-2 conv + max-pool, min input 32³) or ``"small"``
                (3³ stride-1 conv, no pool, min input 8³).
            zero_init_residual: start each residual branch at zero (last BN gamma = 0).
            global_pool: ``"avg"`` (the default) or ``"max"``: how the last feature map becomes one vector per
                volume (:mod:`medconvnext.layers.pooling`; max keeps a small finding's local response).
            grad_checkpointing: recompute block activations in backward to save memory.
        """
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        self.num_classes = num_classes
        self.grad_checkpointing = grad_checkpointing
        if stem == "default":
            self.stem = nn.Sequential(
                nn.Conv3d(in_channels, base_planes, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm3d(base_planes),
                nn.ReLU(inplace=True),
                nn.MaxPool3d(3, stride=2, padding=1),
            )
            stem_stride = 4
        else:
            self.stem = nn.Sequential(
                nn.Conv3d(in_channels, base_planes, 3, stride=1, padding=1, bias=False),
                nn.BatchNorm3d(base_planes),
                nn.ReLU(inplace=True),
            )
            stem_stride = 1
        total = stem_stride * 2 ** (len(layers) - 1)
        self.min_input_size: Triple = (total, total, total)

        in_planes = base_planes
        stages = []
        for i, depth in enumerate(layers):
            planes = base_planes * 2**i
            blocks = []
            for j in range(depth):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(Bottleneck(in_planes, planes, stride, groups, width_per_group))
                in_planes = planes * Bottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.num_features = in_planes
        self.global_pool = check_global_pool(global_pool)
        self.head_drop = nn.Dropout(head_dropout)
        self.head = nn.Linear(in_planes, num_classes)

        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm3d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, Bottleneck):
                    nn.init.zeros_(module.bn3.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map of the last stage, (N, num_features, d, h, w)."""
        check_input_size(x, self.min_input_size, type(self).__name__)
        x = self.stem(x)
        for stage in self.stages:
            for block in stage:
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


@register_model("resnext")
def resnext_tiny(**kwargs) -> ResNeXt3d:
    """Small CPU-sized ResNeXt: layers (1, 1, 1, 1), 8 groups x 4, base planes 32."""
    return ResNeXt3d(**{"layers": (1, 1, 1, 1), "groups": 8, "width_per_group": 4, "base_planes": 32, **kwargs})


@register_model("resnext")
def resnext50_32x4d(**kwargs) -> ResNeXt3d:
    """ResNeXt-50 (32x4d): layers (3, 4, 6, 3)."""
    return ResNeXt3d(**{"layers": (3, 4, 6, 3), "groups": 32, "width_per_group": 4, **kwargs})


@register_model("resnext")
def resnext101_32x8d(**kwargs) -> ResNeXt3d:
    """ResNeXt-101 (32x8d): layers (3, 4, 23, 3)."""
    return ResNeXt3d(**{"layers": (3, 4, 23, 3), "groups": 32, "width_per_group": 8, **kwargs})
