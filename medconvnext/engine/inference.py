"""Predict with a trained checkpoint: the run's own deterministic preprocessing, then the model.

Three ways to run the model over a preprocessed volume (``InferenceConfig.mode``):

- ``whole``: the volume padded/cropped to the training input size, exactly as in training (default);
- ``sliding``: the full volume (no pad/crop) tiled with windows of ``roi_size``
  (:func:`medconvnext.engine.sliding_window.sliding_window_classify`), outputs aggregated per case;
- ``auto``: the full volume in one forward pass when it is at most ``AUTO_WHOLE_FACTOR`` x the input
  size on every axis (valid for these fully convolutional + global-pool models), else ``sliding``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai import transforms as mt
from torch import nn

from medconvnext.config import InferenceConfig
from medconvnext.data.preprocessing import Preprocessing
from medconvnext.data.transforms import (
    IMAGE,
    deterministic_transforms,
    geometry_transforms,
    intensity_transforms,
    load_transforms,
)
from medconvnext.engine.checkpoint import load_checkpoint
from medconvnext.engine.devices import autocast, resolve_device
from medconvnext.engine.sliding_window import AGGREGATIONS, WindowResult, sliding_window_classify
from medconvnext.errors import UserError
from medconvnext.rundir import find_checkpoint

INFERENCE_MODES = ("whole", "sliding", "auto")
AUTO_WHOLE_FACTOR = 2


@dataclass
class VolumePrediction:
    """One case: class probabilities (K,), how they were computed, and the window grid when tiled."""

    probabilities: np.ndarray
    mode: str  # "whole" or "sliding": what actually ran
    windows: WindowResult | None = None
    affine: np.ndarray | None = None  # of the preprocessed volume (for the window map)


def check_inference(settings: InferenceConfig) -> None:
    """UserError naming the ``inference.*`` field that is wrong."""
    if settings.mode not in INFERENCE_MODES:
        raise UserError(f"inference.mode must be one of {', '.join(INFERENCE_MODES)}, got {settings.mode!r}")
    if settings.aggregation not in AGGREGATIONS:
        raise UserError(f"inference.aggregation must be one of {', '.join(AGGREGATIONS)}, got {settings.aggregation!r}")
    if not 0.0 <= settings.overlap < 1.0:
        raise UserError(f"inference.overlap must be in [0, 1), got {settings.overlap}")
    if settings.sw_batch_size < 1:
        raise UserError(f"inference.sw_batch_size must be >= 1, got {settings.sw_batch_size}")


def uncropped_transforms(pre: Preprocessing) -> mt.Compose:
    """The deterministic preprocessing without the final pad/crop to the input size (keeps the affine)."""
    return mt.Compose([
        *load_transforms(),
        *geometry_transforms(pre),
        *intensity_transforms(pre),
        mt.EnsureTyped(IMAGE, dtype="float32", track_meta=True),
    ])


def choose_mode(settings: InferenceConfig, volume_size: Sequence[int], input_size: Sequence[int]) -> str:
    """``whole`` or ``sliding`` for a volume of ``volume_size`` (``auto`` resolved)."""
    if settings.mode != "auto":
        return settings.mode
    fits = all(v <= AUTO_WHOLE_FACTOR * i for v, i in zip(volume_size, input_size, strict=True))
    return "whole" if fits else "sliding"


@torch.no_grad()
def infer_volume(
    model: nn.Module,
    volume: torch.Tensor,
    settings: InferenceConfig,
    input_size: Sequence[int],
    device: torch.device,
    amp: bool,
) -> VolumePrediction:
    """Probabilities of one preprocessed (C, D, H, W) volume, whole or by sliding windows.

    For ``whole`` the caller passes the volume as it should be seen (cropped or not); a volume smaller
    than the input size on some axis is zero-padded (symmetrically) up to it.
    """
    affine = np.asarray(volume.affine) if hasattr(volume, "affine") else None
    plain = volume.as_tensor() if hasattr(volume, "as_tensor") else volume
    mode = choose_mode(settings, plain.shape[1:], input_size)
    with autocast(device, amp):
        if mode == "sliding":
            roi = settings.roi_size or list(input_size)
            result = sliding_window_classify(plain, model, roi, settings.overlap, settings.sw_batch_size,
                                             settings.aggregation)
            return VolumePrediction(result.probabilities.float().cpu().numpy(), mode, result, affine)
        logits = model(_pad_to(plain, input_size).unsqueeze(0).to(device))
    return VolumePrediction(torch.softmax(logits.float(), dim=1)[0].cpu().numpy(), mode, None, affine)


def _pad_to(volume: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Zero-pad (C, D, H, W) symmetrically so that every spatial axis is at least ``size``."""
    pads: list[int] = []
    for have, want in reversed(list(zip(volume.shape[1:], size, strict=True))):
        extra = max(0, want - have)
        pads += [extra // 2, extra - extra // 2]
    return F.pad(volume, pads) if any(pads) else volume


@dataclass
class Predictor:
    """A model in eval mode plus the preprocessing and class names it was trained with."""

    model: nn.Module
    preprocessing: Preprocessing
    class_names: list[str]
    device: torch.device
    amp: bool = True
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    @classmethod
    def load(cls, model_path: str | Path, device: str = "auto", inference: InferenceConfig | None = None) -> Predictor:
        """From a run directory (its best checkpoint) or a checkpoint file."""
        checkpoint = load_checkpoint(find_checkpoint(model_path))
        torch_device = resolve_device(device)
        model = checkpoint.build_model().to(torch_device)
        pre = Preprocessing.from_dict(checkpoint.meta["preprocessing"])
        # the run's own inference settings (config.yaml's ``inference`` section) unless told otherwise
        settings = inference or InferenceConfig(**checkpoint.meta.get("inference", {}))
        check_inference(settings)
        return cls(model, pre, checkpoint.class_names, torch_device, inference=settings)

    def preprocess(self, image: str | Path, crop: bool = True) -> torch.Tensor:
        """(C, D, H, W) tensor exactly as in training (``crop=False``: without the final pad/crop)."""
        path = Path(image)
        if not path.exists():
            raise UserError(f"{path}: no such file")
        transform = deterministic_transforms(self.preprocessing) if crop else uncropped_transforms(self.preprocessing)
        try:
            return transform({"image": str(path)})["image"]
        except Exception as exc:  # noqa: BLE001 - MONAI wraps reader errors in RuntimeError
            raise UserError(f"{path}: cannot read or preprocess the image ({_root_cause(exc)})") from None

    @torch.no_grad()
    def predict_tensor(self, volume: torch.Tensor) -> np.ndarray:
        """Class probabilities (K,) for one preprocessed (C, D, H, W) volume, in one forward pass."""
        with autocast(self.device, self.amp):
            logits = self.model(volume.unsqueeze(0).to(self.device))
        return torch.softmax(logits.float(), dim=1)[0].cpu().numpy()

    def predict_file(self, image: str | Path) -> VolumePrediction:
        """One scan with the configured inference mode."""
        crop = self.inference.mode == "whole"
        volume = self.preprocess(image, crop=crop)
        return infer_volume(self.model, volume, self.inference, self.preprocessing.input_size, self.device, self.amp)

    def predict_files(self, images: Sequence[str | Path]) -> np.ndarray:
        """Probabilities (N, K) for N image files."""
        return np.stack([self.predict_file(image).probabilities for image in images])


def save_window_map(prediction: VolumePrediction, class_names: Sequence[str], path: str | Path) -> Path | None:
    """The per-window probability grid as a 4D NIfTI (n_d, n_h, n_w, K) aligned to the scan; None when not tiled."""
    import nibabel as nib

    if prediction.windows is None or prediction.affine is None:
        return None
    grid = prediction.windows.window_probabilities.float().cpu().numpy().astype(np.float32)
    image = nib.Nifti1Image(grid, prediction.windows.map_affine(prediction.affine))
    image.header["descrip"] = ("classes: " + ",".join(class_names))[:79].encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def inference_from_options(base: InferenceConfig | None = None, **options: Any) -> InferenceConfig:
    """``base`` (or the defaults) with the options that are not None replaced."""
    settings = InferenceConfig(**vars(base)) if base is not None else InferenceConfig()
    for key, value in options.items():
        if value is not None:
            setattr(settings, key, value)
    return settings
