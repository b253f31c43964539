"""Model registry keyed by variant name (after timm's ``_registry.py``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
