"""Ensembles of trained models: the folds of a cross-validation, probabilities averaged.

A thin functional layer over :class:`medconvnext.engine.inference.FoldEnsemble` (which ``predict`` uses), so
that ``cv`` (its test cases), ``evaluate`` and ``predict`` ensemble folds the same way: every member keeps its
own preprocessing (each fold planned its own from its training cases) and the ensemble's probabilities are
the mean of the members' (as nnU-Net ensembles folds).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medconvnext.config import InferenceConfig
from medconvnext.engine.inference import FoldEnsemble, ImagePaths, Predictor

__all__ = ["ensemble_probabilities", "load_ensemble"]


def load_ensemble(
    model_path: str | Path, device: str = "auto", inference: InferenceConfig | None = None, tta: bool = False
) -> list[Predictor]:
    """One :class:`Predictor` per model: every fold's best checkpoint of a cross-validation run directory,
    else the single run (or checkpoint file) ``model_path`` names. UserError when the classes differ.
    ``tta``: each predictor averages over the 8 flips of a volume."""
    return FoldEnsemble.load(model_path, device=device, inference=inference, tta=tta).members


def ensemble_probabilities(predictors: Sequence[Predictor], images: Sequence[ImagePaths]) -> np.ndarray:
    """Mean class probabilities (N, K) of ``predictors`` over N cases (each an image path, or a list of
    paths for a multi-image case). All predictors must share the class names (in the same order)."""
    if not predictors:
        raise ValueError("ensemble_probabilities needs at least one predictor")
    if any(p.class_names != predictors[0].class_names for p in predictors):
        raise ValueError("the predictors were trained with different class names")
    return FoldEnsemble(list(predictors), []).predict_files(images)
