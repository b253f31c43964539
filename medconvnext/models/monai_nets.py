"""MONAI baselines (DenseNet-121, ResNet-18/50 with ``spatial_dims=3``) behind the registry.

Thin wrappers: the MONAI network does the work; the wrapper adds the input check and ``min_input_size``
so every registered model fails the same clear way on a too-small input.

``min_input_size`` is the network's total stride (the rule used for our own families):

- DenseNet-121: 7³ stride-2 conv, stride-2 max-pool, three stride-2 average-pool transitions -> 32.
  (29³ is the smallest input that runs at all: 28³ pools a 1³ map to nothing.)
- MONAI ResNet: ``conv1_t_stride`` (1 by default, as in MedicalNet) x 2 (max-pool, unless ``no_max_pool``)
  x 8 (three stride-2 stages) -> 16 by default. Any input runs thanks to padding, but below the total
  stride the last map is made of padding.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medconvnext.layers import as_triple, check_input_size
from medconvnext.layers.shapes import Triple
from medconvnext.models._registry import register_model


class MonaiClassifier(nn.Module):
    """A MONAI classification network plus the registry's conventions (input check, ``min_input_size``)."""

    def __init__(self, net: nn.Module, min_input_size: Triple, num_classes: int) -> None:
        super().__init__()
        self.net = net
        self.min_input_size: Triple = min_input_size
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.min_input_size, type(self.net).__name__)
        return self.net(x)


def _monai_resnet(depth: int, num_classes: int, in_channels: int, **kwargs: Any) -> MonaiClassifier:
    from monai.networks.nets import resnet18, resnet50

    build = {18: resnet18, 50: resnet50}[depth]
    net = build(spatial_dims=3, n_input_channels=in_channels, num_classes=num_classes, **kwargs)
    stem = as_triple(kwargs.get("conv1_t_stride", 1), "conv1_t_stride")
    pool = 1 if kwargs.get("no_max_pool", False) else 2
    return MonaiClassifier(net, tuple(s * pool * 8 for s in stem), num_classes)  # type: ignore[arg-type]


@register_model("monai")
def monai_densenet121(num_classes: int = 2, in_channels: int = 1, **kwargs: Any) -> MonaiClassifier:
    """MONAI DenseNet-121 (3D)."""
    from monai.networks.nets import DenseNet121

    net = DenseNet121(spatial_dims=3, in_channels=in_channels, out_channels=num_classes, **kwargs)
    return MonaiClassifier(net, (32, 32, 32), num_classes)


@register_model("monai")
def monai_resnet18(num_classes: int = 2, in_channels: int = 1, **kwargs: Any) -> MonaiClassifier:
    """MONAI ResNet-18 (3D, basic blocks)."""
    return _monai_resnet(18, num_classes, in_channels, **kwargs)


@register_model("monai")
def monai_resnet50(num_classes: int = 2, in_channels: int = 1, **kwargs: Any) -> MonaiClassifier:
    """MONAI ResNet-50 (3D, bottleneck blocks)."""
    return _monai_resnet(50, num_classes, in_channels, **kwargs)
