"""Model registry: ``create_model(name, num_classes=..., in_channels=..., **overrides)``.

Importing this package registers every family.
"""

from medconvnext.models import convmixer, convnext, monai_nets, resnext  # noqa: F401  (registers the variants)
from medconvnext.models._memory import preferred_memory_format, to_memory_format
from medconvnext.models._registry import ModelEntry, create_model, get_entry, list_models, register_model
from medconvnext.models.convmixer import ConvMixer3d
from medconvnext.models.convnext import ConvNeXt3d
from medconvnext.models.inflate import InflationReport, load_2d_weights, load_2d_weights_file
from medconvnext.models.info import model_info
from medconvnext.models.resnext import ResNeXt3d

__all__ = [
    "ConvMixer3d",
    "ConvNeXt3d",
    "InflationReport",
    "ModelEntry",
    "ResNeXt3d",
    "create_model",
    "get_entry",
    "list_models",
    "load_2d_weights",
    "load_2d_weights_file",
    "model_info",
    "preferred_memory_format",
    "register_model",
    "to_memory_format",
]
