"""Size and cost of a registered model without allocating it: parameters, FLOPs, input sizes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from medconvnext.layers import as_triple
from medconvnext.models._registry import get_entry
from medconvnext.models.factory import create_model


def model_info(
    name: str, input_size: int | Sequence[int] | None = None, in_channels: int = 1, num_classes: int = 2
) -> dict[str, Any]:
    """Family, parameter count, GFLOPs of one forward at ``input_size`` (batch 1), minimum and default input size.

    The model is built on the ``meta`` device, so nothing is allocated or computed. FLOPs are counted by
    ``torch.utils.flop_counter.FlopCounterMode``: 2 per multiply-add, i.e. twice the "FLOPs" (MACs) quoted
    by the ConvNeXt paper and timm; ``gmacs`` gives that number. ``gflops`` is None when ``input_size`` is
    below the model's minimum.
    """
    entry = get_entry(name)
    size = as_triple(input_size, "input_size") if input_size is not None else entry.default_input_size
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, in_channels=in_channels)
    model.eval()
    min_size = tuple(int(s) for s in model.min_input_size)
    gflops = None
    if all(s >= m for s, m in zip(size, min_size, strict=True)):
        x = torch.empty(1, in_channels, *size, device="meta")
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(x)
        gflops = counter.get_total_flops() / 1e9
    return {
        "name": name,
        "family": entry.family,
        "params": sum(p.numel() for p in model.parameters()),
        "input_size": list(size),
        "gflops": gflops,
        "gmacs": None if gflops is None else gflops / 2,
        "min_input_size": list(min_size),
        "default_input_size": list(entry.default_input_size),
    }
