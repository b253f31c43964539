"""Checkpoints: model weights as safetensors (no pickle) + all metadata predict needs.

The metadata (model name and arguments, class names, preprocessing, metrics, versions) is stored
inside the safetensors header and also written beside it as ``<name>.json`` for people to read.
Files are written to a temporary name, fsynced, then renamed, so a crash never leaves a broken
checkpoint under the final name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medconvnext.errors import UserError
from medconvnext.fileio import atomic_write  # noqa: F401 - re-exported: engine modules import it from here

META_KEY = "medconvnext"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """What a checkpoint file holds."""

    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any]

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    def build_model(self) -> nn.Module:
        """The model, with these weights, in eval mode."""
        from medconvnext.models import create_model

        args = dict(self.meta["model"])
        model = create_model(args.pop("name"), **args)
        model.load_state_dict(self.state_dict)
        return model.eval()


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write weights + metadata atomically; ``meta`` must be JSON-serialisable."""
    from safetensors.torch import save_file

    path = Path(path)
    plain = unwrap_model(model)
    # the model's own build arguments unless the caller gives them: predict rebuilds the model from them
    meta = {"format_version": FORMAT_VERSION, "model": getattr(plain, "model_args", None), **meta}
    state = {k: v.detach().cpu().contiguous() for k, v in plain.state_dict().items()}
    header = {META_KEY: json.dumps(meta)}
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=header))
    atomic_write(path.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(meta, indent=2), encoding="utf-8"))


def load_checkpoint(path: str | Path, tensors: bool = True) -> Checkpoint:
    """Read a checkpoint without unpickling anything. ``tensors=False`` reads the header only: the metadata and,
    in ``state_dict``, empty tensors of the stored shapes (to compare shapes without reading the weights)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            state = {key: f.get_tensor(key) if tensors else torch.empty(f.get_slice(key).get_shape(), device="meta")
                     for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable medconvnext checkpoint ({exc})") from None
    if META_KEY not in header:
        raise UserError(f"{path}: safetensors file without medconvnext metadata (not written by medconvnext)")
    meta = json.loads(header[META_KEY])
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"{path}: written by a newer medconvnext (format {meta['format_version']}); upgrade")
    return Checkpoint(state, meta)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
