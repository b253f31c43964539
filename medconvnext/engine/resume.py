"""The training state saved beside ``checkpoint_last`` so a run can continue exactly where it stopped.

``training_state.pt`` holds plain tensors, numbers, strings, lists and dicts only (RNG states are
stored as uint8 tensors / lists), so it loads with ``torch.load(weights_only=True)``: resuming never
unpickles arbitrary objects. It is written atomically and *before* the epoch is appended to
``metrics.jsonl``, so it is the commit point of an epoch: on resume, ``metrics.jsonl`` is rewritten
from the history stored here and any half-finished epoch is simply run again.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medconvnext.engine.checkpoint import atomic_write
from medconvnext.errors import UserError

STATE_VERSION = 1


def rng_states(generator: torch.Generator) -> dict[str, Any]:
    """Python, NumPy, torch (CPU and CUDA) and DataLoader-generator RNG states, weights_only-safe."""
    version, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    states: dict[str, Any] = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "loader": generator.get_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any], generator: torch.Generator) -> None:
    """Restore what :func:`rng_states` saved."""
    py_version, py_state, py_gauss = states["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    n = states["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(states["torch"])
    generator.set_state(states["loader"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_training_state(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically with torch.save."""
    atomic_write(path, lambda tmp: torch.save({"version": STATE_VERSION, **state}, tmp))


def load_training_state(path: Path) -> dict[str, Any]:
    """Read a training state without unpickling arbitrary objects."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError) as exc:
        raise UserError(f"{path}: unreadable training state ({str(exc).splitlines()[0]})") from None
    if state.get("version", 0) > STATE_VERSION:
        raise UserError(f"{path}: written by a newer medconvnext; upgrade to resume this run")
    return state
