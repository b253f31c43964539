"""Model registry: ``create_model(name, num_classes=..., in_channels=..., **overrides)``.

Importing this package registers every family.
"""

from medconvnext.models import convnext  # noqa: F401  (registers the variants)
from medconvnext.models._registry import ModelEntry, create_model, get_entry, list_models, register_model
from medconvnext.models.convnext import ConvNeXt3d

__all__ = ["ConvNeXt3d", "ModelEntry", "create_model", "get_entry", "list_models", "register_model"]
