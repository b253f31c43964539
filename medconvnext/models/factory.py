"""``create_model``: a registered variant built, optionally as the encoder of a multiple-instance classifier.

Apart from the registry (:mod:`medconvnext.models._registry`) because it builds the MIL wrapper, whose memory
layout asks the registry for the family: the registry then imports nothing of the models, and no import runs in a
circle.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from medconvnext.models._registry import get_entry
from medconvnext.models.mil import MILClassifier


def create_model(name: str, num_classes: int = 2, in_channels: int = 1, mil: dict[str, Any] | None = None,
                 **overrides: Any) -> nn.Module:
    """Build the variant ``name``; ``overrides`` change its architecture arguments.

    ``mil`` (a dict, possibly empty, of :class:`~medconvnext.models.mil.MILClassifier` arguments such as
    ``attention_dim``): the variant becomes the encoder of a gated-attention multiple-instance classifier.

    The returned module carries ``model_args`` (everything needed to build it again,
    stored in checkpoints) and ``min_input_size`` (D, H, W).
    """
    entry = get_entry(name)
    model = entry.fn(num_classes=num_classes, in_channels=in_channels, **overrides)
    if mil is not None:
        if not isinstance(mil, dict):
            raise ValueError(f"mil must be a mapping of MIL arguments (e.g. {{attention_dim: 128}}), got {mil!r}")
        model = MILClassifier(model, num_classes, **mil)
    model.model_args = {"name": name, "num_classes": num_classes, "in_channels": in_channels, **overrides}
    if mil is not None:
        model.model_args["mil"] = dict(mil)
    return model
