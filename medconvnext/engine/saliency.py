"""Saliency maps in the scan's own space: Grad-CAM on the last feature stage, or occlusion.

- ``gradcam`` (Selvaraju et al.): the last stage's feature map A (N, C, d, h, w) is what
  ``model.forward_features`` returns for the ConvNeXt, ConvMixer and ResNeXt families, and the logits are
  ``model.forward_head(A)``; so the gradient of the class logit with respect to A needs no hooks (and works
  with gradient checkpointing). Channel weights = gradients averaged over d, h, w; map = ReLU(sum_c w_c A_c),
  upsampled (trilinear) to the input and divided by its maximum, so it lies in [0, 1]. When the last stage is
  one voxel (e.g. ``convnext_atto``, total stride 32, at a 32³ input) the map would be the same value everywhere:
  :func:`grad_cam` refuses, and :func:`scan_saliency` (what ``predict --cam`` runs) uses occlusion instead and
  says so in a warning.
- ``occlusion`` (Zeiler & Fergus): a cube of zeros (the mean intensity after z-scoring) slides over the
  preprocessed volume; each voxel gets the mean drop of the class probability over the cubes that covered
  it (negative drops count as 0), divided by its maximum like Grad-CAM (``normalise=False`` keeps the raw
  drop in probability). Works for any model, including the MONAI baselines; one forward pass per cube
  position (default: cubes of a quarter of the input per axis, moved by half a cube: 7³ = 343 passes).

The map is computed on the volume as the model saw it (the run's preprocessing), then taken back to the
scan's grid by inverting that preprocessing with MONAI (``Invertd``: pad/crop, resampling, reorientation),
so it is written with the scan's own shape and affine and overlays on it in ITK-SNAP or 3D Slicer.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medconvnext.choices import CamMethod, choices
from medconvnext.engine.inference import FoldEnsemble, ImagePaths, Predictor, _pad_to
from medconvnext.errors import UserError
from medconvnext.fileio import record

CAM_METHODS = choices(CamMethod)


@dataclass
class ScanMap:
    """A saliency map on a scan's grid: (X, Y, Z) float32 values in [0, 1] and the scan's voxel-to-RAS affine."""

    array: np.ndarray
    affine: np.ndarray
    method: str = "gradcam"  # the method that made it (occlusion when Grad-CAM had no spatial resolution)


class NoSpatialResolution(UserError):
    """Grad-CAM of a model whose last feature stage is a single voxel: the map would be constant."""


def supports_grad_cam(model: nn.Module) -> bool:
    """Grad-CAM needs the ``forward_features`` / ``forward_head`` split (ConvNeXt, ConvMixer, ResNeXt)."""
    return callable(getattr(model, "forward_features", None)) and callable(getattr(model, "forward_head", None))


def _model_device(model: nn.Module) -> torch.device:
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _batched(volume: torch.Tensor) -> torch.Tensor:
    plain = volume.as_tensor() if hasattr(volume, "as_tensor") else volume
    return plain.unsqueeze(0) if plain.ndim == 4 else plain


def grad_cam(model: nn.Module, volume: torch.Tensor, class_index: int) -> torch.Tensor:
    """Grad-CAM (D, H, W) in [0, 1] of one (C, D, H, W) volume for ``class_index``, at the volume's resolution.

    The model must be in eval mode and have ``forward_features`` and ``forward_head``.
    """
    if not supports_grad_cam(model):
        raise UserError(f"Grad-CAM needs a model with forward_features/forward_head ({type(model).__name__} has "
                        "none); use --cam-method occlusion")
    x = _batched(volume).to(_model_device(model), dtype=torch.float32)
    frozen = not any(p.requires_grad for p in model.parameters())
    with torch.enable_grad():
        x.requires_grad_(frozen)  # the features need a graph; without trainable weights, through the input
        features = model.forward_features(x)
        if int(np.prod(features.shape[2:])) == 1:
            raise NoSpatialResolution(_one_voxel_message(model, x.shape[2:]))
        logits = model.forward_head(features)
        (grads,) = torch.autograd.grad(logits[0, class_index], features)
    weights = grads.mean(dim=(2, 3, 4), keepdim=True)
    cam = F.relu((weights * features.detach()).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[2:], mode="trilinear", align_corners=False)[0, 0]
    return _unit_max(cam).cpu()


def _one_voxel_message(model: nn.Module, size: Sequence[int]) -> str:
    shown = "x".join(str(int(v)) for v in size)
    return (f"Grad-CAM: the last feature stage of {type(model).__name__} is 1x1x1 for a {shown} input, so its map "
            "would be the same value everywhere")


def last_stage_is_one_voxel(model: nn.Module, volume: torch.Tensor) -> bool:
    """True when Grad-CAM on ``volume`` (C, D, H, W) would have a single voxel of resolution."""
    if not supports_grad_cam(model):
        return False
    with torch.no_grad():
        features = model.forward_features(_batched(volume).to(_model_device(model), dtype=torch.float32))
    return int(np.prod(features.shape[2:])) == 1


def _unit_max(values: torch.Tensor) -> torch.Tensor:
    peak = values.max()
    return values / peak if peak > 0 else torch.zeros_like(values)


def _cube_starts(size: int, cube: int, stride: int) -> list[int]:
    starts = list(range(0, max(size - cube, 0) + 1, stride))
    if starts[-1] != max(size - cube, 0):
        starts.append(max(size - cube, 0))  # the last cube flush with the end: every voxel is covered
    return starts


@torch.no_grad()
def occlusion_map(
    model: nn.Module,
    volume: torch.Tensor,
    class_index: int,
    cube: int | Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
    batch_size: int = 4,
    normalise: bool = True,
) -> torch.Tensor:
    """Occlusion sensitivity (D, H, W) in [0, 1] of one (C, D, H, W) volume for ``class_index``.

    Args:
        cube: side of the zeroed cube (int or per axis); default a quarter of the volume per axis.
        stride: step between cube positions; default half the cube (each voxel covered about 8 times).
        batch_size: occluded copies per forward pass.
        normalise: divide by the maximum (default); else the raw mean drop of the class probability.
    """
    x = _batched(volume).to(_model_device(model), dtype=torch.float32)
    spatial = x.shape[2:]
    sides = [max(1, s // 4) for s in spatial] if cube is None else ([cube] * 3 if isinstance(cube, int) else cube)
    sides = [min(int(c), s) for c, s in zip(sides, spatial, strict=True)]
    steps = [max(1, c // 2) for c in sides] if stride is None else ([stride] * 3 if isinstance(stride, int)
                                                                     else stride)
    positions = list(itertools.product(*(_cube_starts(s, c, int(t)) for s, c, t in
                                         zip(spatial, sides, steps, strict=True))))
    base = torch.softmax(model(x).float(), dim=1)[0, class_index]
    drop = torch.zeros(spatial, dtype=torch.float32, device=x.device)
    count = torch.zeros(spatial, dtype=torch.float32, device=x.device)
    for first in range(0, len(positions), batch_size):
        chunk = positions[first : first + batch_size]
        batch = x.repeat(len(chunk), 1, 1, 1, 1)
        for i, (d, h, w) in enumerate(chunk):
            batch[i, :, d : d + sides[0], h : h + sides[1], w : w + sides[2]] = 0
        probs = torch.softmax(model(batch).float(), dim=1)[:, class_index]
        for (d, h, w), p in zip(chunk, probs, strict=True):
            region = (slice(d, d + sides[0]), slice(h, h + sides[1]), slice(w, w + sides[2]))
            drop[region] += base - p
            count[region] += 1
    heat = (drop / count.clamp(min=1)).clamp(0, 1)
    return (_unit_max(heat) if normalise else heat).cpu()


def volume_saliency(model: nn.Module, volume: torch.Tensor, class_index: int, method: str = "gradcam",
                    **options) -> torch.Tensor:
    """``gradcam`` or ``occlusion`` map (D, H, W) of a (C, D, H, W) volume."""
    if method == "gradcam":
        return grad_cam(model, volume, class_index)
    if method == "occlusion":
        return occlusion_map(model, volume, class_index, **options)
    raise UserError(f"--cam-method {method!r}: choose one of {', '.join(CAM_METHODS)}")


def scan_saliency(predictor: Predictor, images: ImagePaths, class_index: int, method: str = "gradcam",
                  **options) -> ScanMap:
    """Saliency of one case on its (first) scan's own grid: computed on the preprocessed volume the model sees
    (cropped to the input size in ``whole`` mode, else the full volume in one pass), then the preprocessing is
    inverted (MONAI ``Invertd``: pad/crop, resampling, reorientation)."""
    crop = predictor.inference.mode == "whole"
    pipeline = predictor.pipeline(crop=crop, keep_meta=True)
    volume = predictor.preprocess(images, pipeline=pipeline)
    plain = volume.as_tensor()
    padded = _pad_to(plain, predictor.preprocessing.input_size)
    if method == "gradcam" and last_stage_is_one_voxel(predictor.model, padded):
        warnings.warn(f"{_one_voxel_message(predictor.model, padded.shape[1:])}; using occlusion instead (a cube "
                      "sliding over the volume, slower)", stacklevel=2)
        method = "occlusion"
    heat = volume_saliency(predictor.model, padded, class_index, method, **options)
    # undo _pad_to's symmetric padding (a volume smaller than the input size on some axis)
    heat = heat[tuple(slice((p - s) // 2, (p - s) // 2 + s) for p, s in
                      zip(padded.shape[1:], plain.shape[1:], strict=True))]
    result = pipeline.to_scan_grid(volume, heat[None].float())
    array = np.clip(np.nan_to_num(result.as_tensor()[0].numpy().astype(np.float32)), 0.0, 1.0)
    return ScanMap(array, np.asarray(result.affine, dtype=np.float64), method)


def ensemble_saliency(ensemble: FoldEnsemble, images: ImagePaths, class_index: int, method: str = "gradcam",
                      **options) -> ScanMap:
    """The members' maps (each on the scan's grid) averaged: in [0, 1] as each member's is."""
    maps = [scan_saliency(member, images, class_index, method, **options) for member in ensemble.members]
    used = sorted({m.method for m in maps})
    return ScanMap(np.mean([m.array for m in maps], axis=0).astype(np.float32), maps[0].affine, "+".join(used))


def save_saliency(scan_map: ScanMap, path: str | Path, description: str = "") -> Path:
    """Write the map as NIfTI with the scan's affine (and, for a NIfTI scan given as ``reference``, its header)."""
    import nibabel as nib

    image = nib.Nifti1Image(scan_map.array, scan_map.affine)
    image.set_qform(scan_map.affine, code=1)
    image.set_sform(scan_map.affine, code=1)
    image.header["descrip"] = description[:79].encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))  # nibabel picks the format from the name, so not through atomic_write
    record(path)
    return path
