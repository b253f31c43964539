"""Checkpoints built without training (fast), for the predict / CAM / export tests."""

from __future__ import annotations

from pathlib import Path

import torch

from medconvnext.data.preprocessing import PreprocessingPlan
from medconvnext.engine.checkpoint import save_checkpoint
from medconvnext.models import create_model

TINY_CONVNEXT = {"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64]}
CLASSES = ["cystic", "solid"]


def tiny_preprocessing(spacing=(1.5, 1.5, 1.5), size=(32, 32, 32)) -> PreprocessingPlan:
    return PreprocessingPlan(orientation="RAS", spacing=tuple(spacing), input_size=tuple(size), intensity="zscore")


def make_checkpoint(path: Path, model_name: str = "convnext_atto", model_args: dict | None = None, seed: int = 0,
                    classes=CLASSES, preprocessing: PreprocessingPlan | None = None, model=None,
                    inference: dict | None = None) -> Path:
    """Save a randomly initialised (or the given) model as a medconvnext checkpoint at ``path``."""
    if model is None:
        torch.manual_seed(seed)
        model = create_model(model_name, num_classes=len(classes), **(TINY_CONVNEXT if model_args is None
                                                                       else model_args))
    meta = {"class_names": list(classes), "preprocessing": (preprocessing or tiny_preprocessing()).to_dict()}
    if inference is not None:
        meta["inference"] = inference
    save_checkpoint(path, model.eval(), meta)
    return path
