"""Model registry: ``create_model(name, num_classes=..., in_channels=..., **overrides)``.

Importing this package registers every family.
"""

from medconvnext.models import convmixer, convnext, convnext_med, monai_nets, resnext  # noqa: F401  (registers)
from medconvnext.models._memory import (
    apply_memory_format,
    layout_for,
    model_memory_format,
    preferred_memory_format,
)
from medconvnext.models._registry import ModelEntry, get_entry, list_models, register_model
from medconvnext.models.convmixer import ConvMixer3d
from medconvnext.models.convnext import ConvNeXt3d
from medconvnext.models.factory import create_model
from medconvnext.models.inflate import InflationReport, load_2d_weights, load_2d_weights_file
from medconvnext.models.info import model_info
from medconvnext.models.resnext import ResNeXt3d

__all__ = [
    "ConvMixer3d",
    "ConvNeXt3d",
    "InflationReport",
    "ModelEntry",
    "ResNeXt3d",
    "apply_memory_format",
    "create_model",
    "get_entry",
    "layout_for",
    "list_models",
    "load_2d_weights",
    "load_2d_weights_file",
    "model_info",
    "model_memory_format",
    "preferred_memory_format",
    "register_model",
]
