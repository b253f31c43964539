"""Predict with a trained checkpoint: the run's own deterministic preprocessing, then the model.

Three ways to run the model over a preprocessed volume (``InferenceConfig.mode``):

- ``whole``: the volume padded/cropped to the training input size, exactly as in training (default);
- ``sliding``: the full volume (no pad/crop) tiled with windows of ``roi_size``
  (:func:`medconvnext.engine.sliding_window.sliding_window_classify`), outputs aggregated per case;
- ``auto``: the full volume in one forward pass when it is at most ``AUTO_WHOLE_FACTOR`` x the input
  size on every axis (valid for these fully convolutional + global-pool models), else ``sliding``.

A multiple-instance model (``train.patches: mil``, :class:`~medconvnext.models.mil.MILClassifier`) ignores the
mode: it always embeds every window of the full volume and pools them with its attention
(:func:`~medconvnext.engine.sliding_window.sliding_window_mil`), as it was trained; the mode reads ``mil``.

Test-time augmentation (``tta=True``): the softmax probabilities are averaged over the 8 flips of the
preprocessed volume (every subset of the three spatial axes, the identity included), the flips that the
``light`` augmentation trains with. A :class:`FoldEnsemble` averages the probabilities of the folds of a
cross-validation (each fold with its own preprocessing), as nnU-Net ensembles its folds.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medconvnext.config import InferenceConfig, validate_section
from medconvnext.data.capture import reporting
from medconvnext.data.pipeline import PipelineVariant, PreprocessingPipeline
from medconvnext.data.preprocessing import PreprocessingPlan
from medconvnext.engine.checkpoint import load_checkpoint
from medconvnext.engine.devices import as_model_input, autocast, resolve_device
from medconvnext.engine.sliding_window import WindowResult, sliding_window_classify, sliding_window_mil
from medconvnext.errors import UserError
from medconvnext.fileio import record
from medconvnext.models import apply_memory_format, model_memory_format
from medconvnext.models.mil import is_mil
from medconvnext.rundir import find_checkpoint, model_checkpoints

AUTO_WHOLE_FACTOR = 2
# test-time augmentation: every subset of the spatial axes (1, 2, 3) of a (C, D, H, W) volume, identity first
TTA_FLIPS: tuple[tuple[int, ...], ...] = tuple(
    dims for n in range(4) for dims in itertools.combinations((1, 2, 3), n)
)

ImagePaths = str | Path | Sequence[str | Path]


@dataclass
class VolumePrediction:
    """One case: class probabilities (K,), how they were computed, and the window grid when tiled."""

    probabilities: np.ndarray
    mode: str  # "whole", "sliding" or "mil" (every window pooled by attention): what actually ran
    windows: WindowResult | None = None
    affine: np.ndarray | None = None  # of the preprocessed volume (for the window map)


def check_inference(settings: InferenceConfig) -> None:
    """The config's own check of the ``inference`` section (:func:`~medconvnext.config.validate_section`), for
    settings that did not come through a validated config: a checkpoint's, or options given to ``predict``.

    Raises:
        UserError: naming the ``inference.*`` field that is wrong.
    """
    validate_section(settings, "inference")


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
    tta: bool = False,
) -> VolumePrediction:
    """Probabilities of one preprocessed (C, D, H, W) volume, whole or by sliding windows.

    For ``whole`` the caller passes the volume as it should be seen (cropped or not); a volume smaller
    than the input size on some axis is zero-padded (symmetrically) up to it. With ``tta`` the model also
    sees the volume flipped along every subset of the spatial axes (:data:`TTA_FLIPS`, 8 passes) and the
    softmax probabilities are averaged; a sliding-window grid is flipped back and averaged the same way.
    """
    affine = np.asarray(volume.affine) if hasattr(volume, "affine") else None
    plain = volume.as_tensor() if hasattr(volume, "as_tensor") else volume
    mode = "mil" if is_mil(model) else choose_mode(settings, plain.shape[1:], input_size)
    probabilities: list[torch.Tensor] = []
    grids: list[WindowResult] = []
    roi = settings.roi_size or list(input_size)
    for dims in TTA_FLIPS if tta else ((),):
        view = plain.flip(dims) if dims else plain
        with autocast(device, amp):
            if mode in ("sliding", "mil"):
                if mode == "mil":
                    result = sliding_window_mil(view, model, roi, settings.overlap, settings.sw_batch_size)
                else:
                    result = sliding_window_classify(view, model, roi, settings.overlap, settings.sw_batch_size,
                                                     settings.aggregation)
                probabilities.append(result.probabilities.float().cpu())
                grids.append(_flip_windows(result, dims))
            else:
                x = as_model_input(_pad_to(view, input_size).unsqueeze(0), device, model_memory_format(model))
                logits = model(x)
                probabilities.append(torch.softmax(logits.float(), dim=1)[0].cpu())
    mean = torch.stack(probabilities).mean(dim=0).numpy()
    windows = None
    if grids:
        windows = grids[0] if len(grids) == 1 else replace(
            grids[0], probabilities=torch.from_numpy(mean),
            window_probabilities=torch.stack([g.window_probabilities for g in grids]).mean(dim=0),
            window_logits=torch.stack([g.window_logits for g in grids]).mean(dim=0),
            attention=None if grids[0].attention is None else torch.stack([g.attention for g in grids]).mean(dim=0),
        )
    return VolumePrediction(mean, mode, windows, affine)


def _flip_windows(result: WindowResult, dims: tuple[int, ...]) -> WindowResult:
    """The window grid of a volume flipped along ``dims`` (volume axes 1-3), flipped back to the volume's order.

    The window starts are symmetric (spread evenly from 0 to size - roi), so window i of the flipped
    volume is window n - 1 - i of the original (to within the rounding of the starts and the odd voxel of
    symmetric padding).
    """
    if not dims:
        return result
    grid_dims = [d - 1 for d in dims]
    return replace(result, window_probabilities=result.window_probabilities.flip(grid_dims),
                   window_logits=result.window_logits.flip(grid_dims),
                   attention=None if result.attention is None else result.attention.flip(grid_dims))


def _pad_to(volume: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Zero-pad (C, D, H, W) symmetrically so that every spatial axis is at least ``size``."""
    pads: list[int] = []
    for have, want in reversed(list(zip(volume.shape[1:], size, strict=True))):
        extra = max(0, want - have)
        pads += [extra // 2, extra - extra // 2]
    return F.pad(volume, pads) if any(pads) else volume


@dataclass
class Predictor:
    """A model in eval mode plus the preprocessing and class names it was trained with.

    ``tta=True`` averages the probabilities over the 8 flips of the volume (see :func:`infer_volume`).
    The model runs in the memory format chosen for its device (:func:`medconvnext.models.apply_memory_format`),
    and is ``torch.compile``'d when loaded with ``compile=True``.
    """

    model: nn.Module
    preprocessing: PreprocessingPlan
    class_names: list[str]
    device: torch.device
    amp: bool = True
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    tta: bool = False

    @classmethod
    def load(
        cls,
        model_path: str | Path,
        device: str = "auto",
        inference: InferenceConfig | None = None,
        tta: bool = False,
        compile: bool = False,
    ) -> Predictor:
        """From a run directory (its best checkpoint) or a checkpoint file; ``compile``: ``torch.compile`` the
        model (pays off over many volumes of one size; each new size compiles again, up to torch's limit)."""
        file = find_checkpoint(model_path)
        checkpoint = load_checkpoint(file)
        if not checkpoint.class_names:  # `pretrain` saves the encoder alone: its head was never trained
            raise UserError(f"{file}: a pretrained encoder without classes (its head is untrained); fine-tune it "
                            f"first with `medconvnext train --init {file}`")
        torch_device = resolve_device(device)
        model = checkpoint.build_model().to(torch_device).eval()
        pre = PreprocessingPlan.from_dict(checkpoint.meta["preprocessing"])
        apply_memory_format(model, torch_device, pre.input_size)
        if compile:
            model = torch.compile(model)
        # the run's own inference settings (config.yaml's ``inference`` section) unless told otherwise
        settings = inference or InferenceConfig(**checkpoint.meta.get("inference", {}))
        check_inference(settings)
        return cls(model, pre, checkpoint.class_names, torch_device, inference=settings, tta=tta)

    def pipeline(self, crop: bool = True, keep_meta: bool = False) -> PipelineVariant:
        """The run's deterministic preprocessing: ``cropped`` (``crop=False``: ``uncropped``, always with metadata).

        Keep the returned object to invert it later (MONAI matches each inverse to its own transform).
        """
        return PreprocessingPipeline(self.preprocessing).deterministic("cropped" if crop else "uncropped", keep_meta)

    def preprocess(self, image: ImagePaths, crop: bool = True, pipeline: PipelineVariant | None = None
                   ) -> torch.Tensor:
        """(C, D, H, W) tensor exactly as in training (``crop=False``: without the final pad/crop).

        ``image`` is one path, or several (stacked as channels, as in training); ``pipeline`` replaces
        :meth:`pipeline` (e.g. one kept for inverting).

        Raises:
            UserError: a missing file, or one that cannot be read or preprocessed (the message names it).
        """
        paths = [Path(image)] if isinstance(image, (str, Path)) else [Path(i) for i in image]
        for path in paths:
            if not path.exists():
                raise UserError(f"{path}: no such file")
        transform = pipeline or self.pipeline(crop)
        try:
            with reporting(str(paths[0])):  # what MONAI warns about on the way: one line naming the scan
                volume = transform({"image": str(paths[0]) if len(paths) == 1 else [str(p) for p in paths]})["image"]
        except Exception as exc:  # noqa: BLE001 - MONAI wraps reader errors in RuntimeError
            cause = _innermost(exc)
            if isinstance(cause, UserError):  # the reader's own one line (geometry rule, DICOM checks)
                raise cause from None
            raise UserError(f"{paths[0]}: cannot read or preprocess the image ({_root_cause(exc)})") from None
        if not torch.isfinite(torch.as_tensor(volume)).all():  # the scan's doing, never blamed on the model
            raise UserError(f"{paths[0]}: the preprocessed scan holds NaN/Inf values (its values overflow float32, "
                            "or its normalisation divided by zero); nothing was predicted")
        return volume

    def predict_case(self, images: ImagePaths) -> VolumePrediction:
        """One case (a path, or several stacked as channels) with the configured inference mode and TTA."""
        crop = self.inference.mode == "whole" and not is_mil(self.model)  # MIL tiles the full volume
        volume = self.preprocess(images, crop=crop)
        return infer_volume(self.model, volume, self.inference, self.preprocessing.input_size, self.device,
                            self.amp, tta=self.tta)

    def predict_files(self, images: Sequence[ImagePaths]) -> np.ndarray:
        """Probabilities (N, K) for N image files (or cases)."""
        return np.stack([self.predict_case(image).probabilities for image in images])


@dataclass
class EnsemblePrediction:
    """One case predicted by every member: the mean probabilities (K,) and each member's prediction."""

    probabilities: np.ndarray
    members: list[VolumePrediction]


@dataclass
class FoldEnsemble:
    """The folds of a cross-validation (or a single model), probabilities averaged over the members.

    Every member keeps its own preprocessing (each fold planned its own), so a case is preprocessed once
    per member.
    """

    members: list[Predictor]
    checkpoints: list[Path]
    runs: int = 1  # how many runs the members come from (load_many)

    @classmethod
    def load(
        cls,
        model_path: str | Path,
        device: str = "auto",
        inference: InferenceConfig | None = None,
        tta: bool = False,
        compile: bool = False,
    ) -> FoldEnsemble:
        """Every fold of a cross-validation run directory; a single model for a run directory or checkpoint."""
        paths = model_checkpoints(model_path)
        members = [Predictor.load(path, device=device, inference=inference, tta=tta, compile=compile)
                   for path in paths]
        first = members[0].class_names
        for path, member in zip(paths, members, strict=True):
            if member.class_names != first:
                raise UserError(f"{path}: classes {member.class_names} differ from {paths[0]}'s {first}")
        return cls(members, paths)

    @classmethod
    def load_many(
        cls,
        model_paths: Sequence[str | Path],
        device: str = "auto",
        inference: InferenceConfig | None = None,
        tta: bool = False,
    ) -> FoldEnsemble:
        """Every model of several runs (train runs, cv runs or checkpoints) as one ensemble, e.g. one recipe trained
        with three seeds; UserError when their classes differ."""
        parts = [cls.load(path, device=device, inference=inference, tta=tta) for path in model_paths]
        for path, part in zip(model_paths, parts, strict=True):
            if part.class_names != parts[0].class_names:
                raise UserError(f"{path}: classes {part.class_names} differ from {model_paths[0]}'s "
                                f"{parts[0].class_names}")
        return cls([m for part in parts for m in part.members], [c for part in parts for c in part.checkpoints],
                   len(parts))

    @property
    def class_names(self) -> list[str]:
        return self.members[0].class_names

    @property
    def is_ensemble(self) -> bool:
        return len(self.members) > 1

    def describe(self) -> str:
        """One line for people: what predicts (a single model, an ensemble of N folds or of several runs) and how."""
        if self.runs > 1:
            what = f"ensemble of {self.runs} runs ({len(self.members)} models, mean probability)"
        else:
            what = f"ensemble of {len(self.members)} folds (mean probability)" if self.is_ensemble else "single model"
        if self.members[0].tta:
            what += f", test-time augmentation ({len(TTA_FLIPS)} flips)"
        return what

    def set_inference(self, **options: Any) -> None:
        """Replace the members' inference settings that are not None (e.g. from command-line options)."""
        for member in self.members:
            member.inference = inference_from_options(member.inference, **options)
            check_inference(member.inference)

    def predict_case(self, images: ImagePaths) -> EnsemblePrediction:
        """Mean probabilities of the members for one case."""
        members = [member.predict_case(images) for member in self.members]
        return EnsemblePrediction(np.mean([m.probabilities for m in members], axis=0), members)

    def predict_files(self, images: Sequence[ImagePaths]) -> np.ndarray:
        """Mean probabilities (N, K) for N cases."""
        return np.stack([self.predict_case(image).probabilities for image in images])


def save_window_map(prediction: VolumePrediction, class_names: Sequence[str], path: str | Path) -> Path | None:
    """The per-window probability grid as a 4D NIfTI (n_d, n_h, n_w, K) aligned to the scan; for a MIL model the
    attention weight of each window, a 3D NIfTI (n_d, n_h, n_w) summing to 1. None when not tiled."""
    import nibabel as nib

    if prediction.windows is None or prediction.affine is None:
        return None
    attention = prediction.windows.attention
    values = attention if attention is not None else prediction.windows.window_probabilities
    grid = values.float().cpu().numpy().astype(np.float32)
    image = nib.Nifti1Image(grid, prediction.windows.map_affine(prediction.affine))
    what = "MIL attention per window (sum 1)" if attention is not None else "classes: " + ",".join(class_names)
    image.header["descrip"] = what[:79].encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))  # nibabel picks the format from the name, so not through atomic_write
    record(path)
    return path


def _innermost(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _root_cause(exc: BaseException) -> str:
    exc = _innermost(exc)
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def inference_from_options(base: InferenceConfig | None = None, **options: Any) -> InferenceConfig:
    """``base`` (or the defaults) with the options that are not None replaced."""
    settings = InferenceConfig(**vars(base)) if base is not None else InferenceConfig()
    for key, value in options.items():
        if value is not None:
            setattr(settings, key, value)
    return settings
