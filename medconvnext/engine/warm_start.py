"""Starting a 3D model from 3D weights: a pretraining run's encoder or any compatible checkpoint.

``train --init RUN_OR_CHECKPOINT`` loads every tensor of the model except the classification layer
(``head.*``, which depends on the number of classes) from a medconvnext safetensors checkpoint (no pickle),
strictly: a missing tensor, an unexpected one or a shape mismatch is a user error naming the first few.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from medconvnext.config import yaml_spelling
from medconvnext.data.preprocessing import PreprocessingPlan
from medconvnext.engine.checkpoint import load_checkpoint
from medconvnext.errors import UserError
from medconvnext.rundir import RunDir

HEAD_PREFIX = "head."


def init_checkpoint(path: str | Path) -> Path:
    """The checkpoint file behind ``path``: a file, or a run directory's encoder (pretraining) or best
    checkpoint (training)."""
    path = Path(path)
    if path.is_file():
        return path
    for checkpoint in (RunDir(path).checkpoint("encoder"), RunDir(path).checkpoint("best")):
        if checkpoint.is_file():
            return checkpoint
    raise UserError(f"model.init {path}: no checkpoint there (a .safetensors file, or a pretrain/train run folder)")


def check_init_compatible(model: nn.Module, plan: PreprocessingPlan, path: str | Path) -> list[str]:
    """Refuse (UserError) a checkpoint whose tensors do not fit ``model`` or that was trained on another intensity
    scheme than ``plan``'s; returns warnings for a different spacing (> 10 % on an axis) or input size.

    Called before a run directory is written. Why the intensity is an error: an encoder pretrained on inputs in
    [0, 1] (minmax) and fine-tuned on z-scored ones sees another distribution in every layer, silently.
    """
    file = init_checkpoint(path)
    checkpoint = load_checkpoint(file, tensors=False)  # shapes and metadata; the weights are read once, when loaded
    _given_tensors(model, checkpoint.state_dict, file, _holds(checkpoint.meta))
    if "preprocessing" not in checkpoint.meta:  # a foreign checkpoint: nothing to compare
        return []
    theirs = PreprocessingPlan.from_dict(checkpoint.meta["preprocessing"])
    if theirs.intensity != plan.intensity:
        raise UserError(f"model.init {file}: its weights were trained on preprocessing.intensity {theirs.intensity!r}, "
                        f"this run plans {plan.intensity!r}; set --set preprocessing.intensity={theirs.intensity}")
    notes = []
    if theirs.spacing is not None and plan.spacing is not None and any(
            abs(a - b) > 0.1 * b for a, b in zip(plan.spacing, theirs.spacing, strict=True)):
        notes.append(f"model.init {file}: trained at spacing {list(theirs.spacing)} mm, this run plans "
                     f"{list(plan.spacing)} mm")
    if tuple(theirs.input_size) != tuple(plan.input_size):
        notes.append(f"model.init {file}: trained on input size {list(theirs.input_size)}, this run plans "
                     f"{list(plan.input_size)}")
    return notes


def _holds(meta: dict[str, Any]) -> str:
    """`` (it holds convnext_atto, dims=[8, 16]...)``: the model a checkpoint was saved from, for a mismatch."""
    described = meta.get("model")
    if not isinstance(described, dict) or "name" not in described:
        return ""
    args = [f"{k}={yaml_spelling(v, quote=False)}" for k, v in described.items()
            if k not in ("name", "num_classes", "in_channels")]
    return f" (it holds {described['name']}{', ' if args else ''}{', '.join(args)})"


def _given_tensors(model: nn.Module, state: dict[str, Any], file: Path, holds: str = "") -> dict[str, Any]:
    """The checkpoint's tensors but ``head.*``; UserError when any is missing, unexpected or of another shape
    (``holds``: what the checkpoint's metadata says it is, appended to the message)."""
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(HEAD_PREFIX)}
    given = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIX)}
    missing = sorted(set(own) - set(given))
    unexpected = sorted(set(given) - set(own))
    mismatched = sorted(k for k in set(own) & set(given) if tuple(own[k].shape) != tuple(given[k].shape))
    for kind, keys in (("missing from it", missing), ("not in the model", unexpected),
                       ("of another shape", mismatched)):
        if keys:
            shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
            raise UserError(f"model.init {file}: {len(keys)} tensor(s) {kind} ({shown}); the checkpoint must come "
                            f"from the same model and arguments{holds}")
    return given


def load_3d_weights(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Copy the checkpoint's tensors into ``model`` (all but ``head.*``); returns what was loaded.

    Raises:
        UserError: unreadable checkpoint, or tensors missing, unexpected or of another shape.
    """
    file = init_checkpoint(path)
    given = _given_tensors(model, load_checkpoint(file).state_dict, file)
    model.load_state_dict(given, strict=False)
    return {"path": str(file), "loaded": len(given), "not_loaded": sorted(k for k in model.state_dict()
                                                                          if k.startswith(HEAD_PREFIX))}
