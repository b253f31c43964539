"""Dataset fingerprint (spacings, sizes, intensities) -> the preprocessing plan, after nnU-Net's planner."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from medconvnext.config import PreprocessingConfig
from medconvnext.data.datalist import Case
from medconvnext.data.io import read_header
from medconvnext.data.preprocessing import Preprocessing
from medconvnext.errors import UserError

MAX_AUTO_INPUT = 256  # above this per axis, whole-volume training stops being sensible on one GPU
ANISOTROPY_RATIO = 3.0  # nnU-Net: a coarse axis > 3x the finest one is planned at its 10th percentile
MODALITIES = ("ct", "mri", "mask", "generic")
INTENSITY_BY_MODALITY = {"ct": "clip_zscore", "mri": "nonzero_zscore", "mask": "minmax", "generic": "zscore"}
SAMPLES_PER_CASE = 10_000  # foreground voxels sampled per case for CT statistics (nnU-Net uses 10k too)
CT_PERCENTILES = (0.5, 99.5)
MASK_PROBE_CASES = 5  # volumes read under modality generic to tell shape masks from intensity images
# Relative round-off allowed in planning arithmetic: header spacings are float32 (0.8 is 0.800000012) and the
# planned spacing is rounded to 4 decimals, so a voxel count or a ratio that "is" a whole number or a threshold
# comes out a few 1e-7..1e-4 above it. 0.1 % covers both for spacings down to 0.05 mm; within it, a value
# counts as on the boundary (the input then crops at most 0.1 % of the median extent, a fraction of a voxel).
ROUNDOFF = 1e-3


def ceil_to_multiple(voxels: float, block: int) -> int:
    """Smallest multiple of ``block`` (>= block) that holds ``voxels``, where a count within :data:`ROUNDOFF`
    above a multiple counts as that multiple: round-off never costs a whole block."""
    return max(1, math.ceil(voxels * (1 - ROUNDOFF) / block)) * block


@dataclass
class Fingerprint:
    """Per-case world-ordered (x, y, z) spacings and shapes of the first image of each case."""

    spacings: np.ndarray  # (N, 3)
    shapes: np.ndarray  # (N, 3)
    images: list[tuple[str, ...]] = field(default_factory=list)  # read again only for CT intensity statistics

    def to_dict(self) -> dict:
        return {
            "median_spacing": [float(v) for v in np.median(self.spacings, axis=0)],
            "median_shape": [float(v) for v in np.median(self.shapes, axis=0)],
            "min_spacing": [float(v) for v in self.spacings.min(axis=0)],
            "max_spacing": [float(v) for v in self.spacings.max(axis=0)],
            "num_cases": int(len(self.spacings)),
        }


def compute_fingerprint(cases: Sequence[Case]) -> Fingerprint:
    """Read every case's header (not its voxels)."""
    headers = [read_header(case.images[0]) for case in cases]
    return Fingerprint(
        np.array([h.world_spacing() for h in headers], dtype=float),
        np.array([h.world_shape() for h in headers], dtype=float),
        [tuple(case.images) for case in cases],
    )


def target_spacing(spacings: np.ndarray) -> list[float]:
    """Median spacing per axis; for a strongly anisotropic dataset (coarsest/finest median > 3) the coarse
    axis takes the 10th percentile of its spacings instead (nnU-Net: resampling thick slices to the median
    would throw away the few thin-slice scans' detail), but never finer than the other axes."""
    median = np.median(spacings, axis=0)
    coarse = int(np.argmax(median))
    if median[coarse] / median.min() > ANISOTROPY_RATIO * (1 + ROUNDOFF):  # float32 3.0000001 is not > 3
        others = np.delete(median, coarse)
        median[coarse] = max(float(np.percentile(spacings[:, coarse], 10)), float(others.max()))
    return [round(float(v), 4) for v in median]


def resolve_intensity(config: PreprocessingConfig, images: Sequence[tuple[str, ...]] = ()) -> str:
    """``intensity: auto`` -> the modality's normalisation.

    Under ``modality: generic`` the first image of up to 5 training cases (spread over ``images``) is read:
    when each holds two values only (binary masks), the plan is ``minmax``, since a per-case z-score would make
    the foreground 1/sqrt(foreground fraction), a brightness that depends on the object's size
    (docs/benchmarks.md: 0.06 test AUC for ConvNeXt on AdrenalMNIST3D).
    """
    if config.modality not in MODALITIES:
        raise UserError(f"preprocessing.modality must be one of {', '.join(MODALITIES)}, got {config.modality!r}")
    if config.intensity != "auto":
        return config.intensity
    probed = _probe_cases(len(images)) if config.modality == "generic" else []
    if probed and all(_is_two_valued(_load(images[i][0])) for i in probed):
        warnings.warn(f"preprocessing: all {len(probed)} training volumes sampled to plan the intensity hold two "
                      "values only (masks?): intensity auto -> minmax (per case to [0, 1]); set "
                      "preprocessing.modality or .intensity to choose", stacklevel=2)
        return "minmax"
    return INTENSITY_BY_MODALITY[config.modality]


def _probe_cases(num_cases: int) -> list[int]:
    """Up to ``MASK_PROBE_CASES`` case indices spread evenly over the training cases."""
    if num_cases == 0:
        return []
    picks = np.linspace(0, num_cases - 1, min(MASK_PROBE_CASES, num_cases)).round().astype(int)
    return sorted({int(i) for i in picks})


def _is_two_valued(data: np.ndarray) -> bool:
    other = data[data != data.flat[0]]  # O(n), unlike np.unique on a large CT
    return other.size == 0 or bool((other == other[0]).all())


def plan_preprocessing(
    config: PreprocessingConfig,
    fingerprint: Fingerprint,
    min_input_size: Sequence[int],
    in_channels: int | None = None,
) -> Preprocessing:
    """Fill what the config leaves open: spacing = median spacing (anisotropy-aware); input size = median
    physical extent at that spacing, rounded up to a multiple of the model's minimum size; intensity from
    the modality, with CT clip window and mean/std from the training cases when not given.
    Round-off in the float32 header spacings never adds a block (:func:`ceil_to_multiple`)."""
    spacing = config.spacing or target_spacing(fingerprint.spacings)
    if config.input_size:
        input_size = config.input_size
    else:
        extent = np.median(fingerprint.shapes * fingerprint.spacings, axis=0)
        axes = zip(extent, spacing, min_input_size, strict=True)
        input_size = [min(MAX_AUTO_INPUT, ceil_to_multiple(e / s, m)) for e, s, m in axes]
    intensity = resolve_intensity(config, fingerprint.images)
    clip, mean, std = config.clip, config.mean, config.std
    if intensity == "clip_zscore" and (clip is None or mean is None or std is None):
        clip, mean, std = intensity_statistics(fingerprint.images, clip)
        mean, std = config.mean if config.mean is not None else mean, config.std if config.std is not None else std
    if in_channels is None:
        in_channels = len(fingerprint.images[0]) if fingerprint.images else 1
    return Preprocessing(
        orientation=config.orientation,
        spacing=tuple(float(v) for v in spacing),
        input_size=tuple(int(v) for v in input_size),
        intensity=intensity,
        clip=tuple(float(v) for v in clip) if clip else None,
        mean=None if mean is None else float(mean),
        std=None if std is None else float(std),
        in_channels=in_channels,
    )


def intensity_statistics(
    images: Sequence[tuple[str, ...]], clip: Sequence[float] | None = None, seed: int = 0
) -> tuple[tuple[float, float], float, float]:
    """CT statistics from the first image of each training case: clip window (given, or the 0.5/99.5
    percentiles of sampled foreground voxels) and the mean/std of the clipped samples.

    Without segmentation masks, "foreground" is every voxel above the case's minimum (drops the padding
    and outside-the-scanner value that would otherwise dominate the percentiles).
    """
    if not images:
        raise UserError("cannot compute CT intensity statistics: no training cases")
    rng = np.random.default_rng(seed)
    samples = [_foreground_sample(paths[0], rng) for paths in images]
    values = np.concatenate(samples)
    if clip is None:
        clip = tuple(float(v) for v in np.percentile(values, CT_PERCENTILES))
    clipped = np.clip(values, clip[0], clip[1])
    std = float(clipped.std()) or 1.0  # a constant dataset must not divide by zero
    return (float(clip[0]), float(clip[1])), float(clipped.mean()), std


def _load(path: str) -> np.ndarray:
    from medconvnext.data.transforms import LoadCaseImaged

    # the training loader itself: the same reader, geometry and scaling (scl_slope) as the cached volumes
    return np.asarray(LoadCaseImaged().load(path), dtype=np.float32).reshape(-1)


def _foreground_sample(path: str, rng: np.random.Generator) -> np.ndarray:
    data = _load(path)
    foreground = data[data > data.min()]
    if foreground.size == 0:
        foreground = data
    take = min(SAMPLES_PER_CASE, foreground.size)
    return rng.choice(foreground, size=take, replace=False)
