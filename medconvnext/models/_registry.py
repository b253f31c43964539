"""Model registry keyed by variant name (after timm's ``_registry.py``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

ModelFn = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    """What the registry knows about one variant without building it."""

    name: str
    family: str
    fn: ModelFn
    default_input_size: tuple[int, int, int]


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    family: str, default_input_size: tuple[int, int, int] = (64, 64, 64)
) -> Callable[[ModelFn], ModelFn]:
    """Decorator: register a variant function under its own name."""

    def wrap(fn: ModelFn) -> ModelFn:
        if fn.__name__ in _REGISTRY:
            raise ValueError(f"model {fn.__name__!r} is registered twice")
        _REGISTRY[fn.__name__] = ModelEntry(fn.__name__, family, fn, default_input_size)
        return fn

    return wrap


def list_models(family: str | None = None) -> list[str]:
    """Names of the registered variants (optionally of one family), sorted."""
    return sorted(name for name, entry in _REGISTRY.items() if family is None or entry.family == family)


def get_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``; ValueError listing the choices when unknown."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    return _REGISTRY[name]


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
        from medconvnext.models.mil import MILClassifier

        if not isinstance(mil, dict):
            raise ValueError(f"mil must be a mapping of MIL arguments (e.g. {{attention_dim: 128}}), got {mil!r}")
        model = MILClassifier(model, num_classes, **mil)
    model.model_args = {"name": name, "num_classes": num_classes, "in_channels": in_channels, **overrides}
    if mil is not None:
        model.model_args["mil"] = dict(mil)
    return model
