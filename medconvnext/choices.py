"""Every closed set of choices, each spelled once as a ``Literal`` alias.

The config's mode fields are typed with these aliases (``Config.validate()`` checks them); the CLI types its
options with the same aliases (Typer turns a ``Literal`` into a choice); a module that needs the values as a tuple
asks :func:`choices`. No module spells a second copy, so the lists cannot drift apart
(``tests/test_config.py`` looks for copies). A leaf: it imports nothing of medconvnext.
"""

from __future__ import annotations

import typing
from typing import Any, Literal

__all__ = ["Aggregation", "Augment", "AugmentOn", "Balance", "Cache", "CamMethod", "Crop", "EvalSplit", "ExportFormat",
           "InferenceMode", "Init2dMode", "Intensity", "Leakage", "Modality", "Patches", "ReconstructionLoss", "Select",
           "Tracker", "choices"]

# config fields (medconvnext.config)
Cache = Literal["none", "memory", "disk"]
Augment = Literal["none", "flips", "light", "medium", "heavy"]
AugmentOn = Literal["loader", "device"]
Leakage = Literal["warn", "error", "off"]
Modality = Literal["ct", "mri", "mask", "generic"]
Intensity = Literal["auto", "zscore", "nonzero_zscore", "clip_zscore", "minmax", "none"]
Crop = Literal["auto", "none", "body", "nonzero"]
Balance = Literal["none", "weights", "sampler"]
Select = Literal["val_auc", "last"]
Patches = Literal["none", "random", "foreground", "mil"]
InferenceMode = Literal["whole", "sliding", "auto"]
Aggregation = Literal["mean", "max", "logit_mean"]
Init2dMode = Literal["center", "mean"]

# command options that are not config fields
EvalSplit = Literal["test", "val", "train", "all"]  # evaluate --split
CamMethod = Literal["gradcam", "occlusion"]  # predict --cam-method
ExportFormat = Literal["torchscript", "onnx"]  # export --format
Tracker = Literal["none", "mlflow"]  # train/cv --tracking
ReconstructionLoss = Literal["mse", "bce"]  # pretrain --loss (models.fcmae)


def choices(alias: Any) -> tuple[str, ...]:
    """The values of a ``Literal`` alias, in their order: ``choices(Cache) == ("none", "memory", "disk")``."""
    values = typing.get_args(alias)
    if typing.get_origin(alias) is not Literal or not values:
        raise TypeError(f"{alias!r} is not a Literal alias")
    return values
