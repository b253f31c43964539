"""Dataset fingerprint (spacings, sizes, foreground, intensities) -> the preprocessing plan, after nnU-Net's planner.

The plan keeps the whole field: each scan is cropped to its foreground (``preprocessing.crop``: the body of a CT,
the non-zero voxels of an MRI; :mod:`medconvnext.data.foreground`), then the spacing is chosen so that the largest
cropped training extent fits the voxel budget ``preprocessing.max_input_voxels`` (finest axes coarsened first,
so thick slices stay as they are). The plan records the share of each training case's foreground box that lies
inside the model input (``PreprocessingPlan.field_of_view``) and warns once when a configuration cuts foreground.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medconvnext.config import PreprocessingConfig
from medconvnext.data.datalist import Case
from medconvnext.data.foreground import body_mask, box_strides, foreground_box
from medconvnext.data.io import read_header
from medconvnext.data.preprocessing import PreprocessingPlan
from medconvnext.errors import UserError

MAX_AUTO_INPUT = 256  # without a voxel budget: above this per axis, whole-volume training stops being sensible
CROP_BY_MODALITY = {"ct": "body", "mri": "nonzero", "mask": "none", "generic": "none"}
STATS_STRIDE = 2  # CT statistics sample the body mask on every 2nd voxel per axis (plenty for 10k samples)
ANISOTROPY_RATIO = 3.0  # nnU-Net: a coarse axis > 3x the finest one is planned at its 10th percentile
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
    images: list[tuple[str, ...]] = field(default_factory=list)  # read again for the foreground and CT statistics

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


def resolve_crop(config: PreprocessingConfig) -> str:
    """``crop: auto`` -> the modality's (ct: body, mri: nonzero, mask and generic: none)."""
    return config.crop if config.crop != "auto" else CROP_BY_MODALITY.get(config.modality, "none")


@dataclass
class ForegroundScan:
    """What reading the training cases' voxels gives the plan: each case's foreground box extent in mm
    ((N, 3), axes of the plan's orientation) and, for CT, HU samples from inside the body."""

    extents: np.ndarray
    samples: list[np.ndarray] = field(default_factory=list)


def scan_foreground(images: Sequence[tuple[str, ...]], orientation: str, crop: str, ct_samples: bool,
                    seed: int = 0, memo_dir: str | Path | None = None) -> ForegroundScan:
    """Each case's foreground box extent (mm, in ``orientation``) and, with ``ct_samples``, up to
    ``SAMPLES_PER_CASE`` voxels of its body mask, from its first image reoriented as the pipeline does.

    A case's result is remembered by the digest of the file's bytes and these settings
    (:mod:`medconvnext.data.foreground_memo`, in ``memo_dir``, default ``$MEDCONVNEXT_CACHE_DIR`` or
    ``~/.cache/medconvnext``): a scan planned before is not read again. The others are read one at a time (memory
    does not grow with the cohort). A case's samples are drawn with a generator seeded by ``seed`` and the file's
    digest, so they do not depend on which other cases are planned (a ``cv`` fold reuses them).

    Raises:
        OSError: a first image cannot be read (the validation gate has refused it before a plan is made).
    """
    from medconvnext.data import foreground_memo as memo
    from medconvnext.data.content import default_memo_dir, file_digests

    folder = Path(memo_dir).expanduser() if memo_dir is not None else default_memo_dir()
    firsts = [paths[0] for paths in images]
    digests = file_digests(firsts, folder)  # one call: the digest memo is read and written once
    settings = {"orientation": orientation, "crop": crop, "ct_samples": ct_samples, "seed": seed,
                "samples": SAMPLES_PER_CASE, "stride": STATS_STRIDE}
    extents, samples = [], []
    for path in firsts:
        content = digests[str(Path(path).resolve())]
        key = memo.memo_key(content, Path(path).name, settings)
        found = memo.load_entry(folder, key, SAMPLES_PER_CASE, ct_samples)
        if found is None:
            found = _scan_case(path, orientation, crop, ct_samples, np.random.default_rng([seed, int(content, 16)]))
            memo.save_entry(folder, key, *found)
        extents.append(found[0])
        if ct_samples:
            samples.append(found[1])
    return ForegroundScan(np.array(extents, dtype=float).reshape(-1, 3), samples)


def _scan_case(path: str, orientation: str, crop: str, ct_samples: bool, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
    """Read one scan: (its foreground box extent, 3 float64 mm; its body samples, float32, empty without
    ``ct_samples``)."""
    from monai import transforms as mt

    image = mt.Orientation(axcodes=orientation, labels=None)(_load_image(path))
    volume = image.as_tensor().numpy()
    box = foreground_box(volume, crop)
    spacing = np.asarray(image.pixdim, dtype=float)[:3]
    extent = np.array([(b - a) * sp for (a, b), sp in zip(box, spacing, strict=True)], dtype=np.float64)
    if not ct_samples:
        return extent, np.zeros(0, np.float32)
    cropped = volume[0][tuple(slice(a, b) for a, b in box)]
    return extent, _body_sample(cropped, rng)


def fit_spacing(spacing: Sequence[float], extent: Sequence[float], budget: int, min_size: Sequence[int]
                ) -> list[float]:
    """The finest spacing (mm) at which ``extent`` (mm per axis) fits in ``budget`` voxels, each axis rounded up
    to a multiple of ``min_size``: every axis finer than a common level ``s`` is coarsened to ``s`` (so the
    in-plane axes of thick-slice CT coarsen before the slice axis does, and anisotropy only shrinks), ``s`` the
    smallest level that fits (bisection). ``spacing`` itself when it already fits."""

    def voxels(level: float) -> int:
        return math.prod(ceil_to_multiple(e / max(sp, level), m) for e, sp, m in zip(extent, spacing, min_size,
                                                                                   strict=True))

    if voxels(0.0) <= budget:
        return [float(v) for v in spacing]
    low, high = min(spacing), max(max(extent), max(spacing)) * 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if voxels(middle) > budget else (low, middle)
    level = math.ceil(high * 1e4) / 1e4  # 4 decimals, rounded up: never over the budget
    return [max(float(sp), level) for sp in spacing]


def field_of_view(input_size: Sequence[int], spacing: Sequence[float], extents: np.ndarray
                  ) -> tuple[float, float, int, int]:
    """(smallest share, median share, cases cut, cases): the share of each case's foreground box (``extents``,
    mm) inside a centred input of ``input_size`` voxels at ``spacing`` mm."""
    window = np.asarray(input_size, float) * np.asarray(spacing, float)
    per_axis = window / np.maximum(extents, 1e-6)
    # within ROUNDOFF on an axis is whole (ceil_to_multiple allows that much): never "cut ... 100% inside"
    per_axis = np.where(per_axis >= 1 - ROUNDOFF, 1.0, per_axis)
    shares = np.prod(per_axis, axis=1)
    cut = int((shares < 1.0).sum())
    return float(shares.min()), float(np.median(shares)), cut, int(len(shares))


def plan_preprocessing(
    config: PreprocessingConfig,
    fingerprint: Fingerprint,
    min_input_size: Sequence[int],
    in_channels: int | None = None,
    tiled: bool = False,
) -> PreprocessingPlan:
    """Fill what the config leaves open, keeping the whole field (module docstring):

    - crop: the modality's foreground (``crop: auto``);
    - spacing: the median spacing (anisotropy-aware), coarsened to fit ``max_input_voxels`` when the input size
      is planned too;
    - input size: the largest cropped training extent at that spacing, rounded up to a multiple of the model's
      minimum size (capped at 256 per axis without a budget);
    - intensity from the modality; for CT the clip window and mean/std from voxels inside the body.

    Warns once (with the share and the number of cases) when the input cuts a training case's foreground, unless
    ``tiled``: the input is a patch (``train.patches``) and validation and predict tile the whole volume.
    Round-off in the float32 header spacings never adds a block (:func:`ceil_to_multiple`).
    """
    crop = resolve_crop(config)
    intensity = resolve_intensity(config, fingerprint.images)
    ct_stats = intensity == "clip_zscore" and (config.clip is None or config.mean is None or config.std is None)
    scan = None
    if (crop != "none" or ct_stats) and fingerprint.images:
        scan = scan_foreground(fingerprint.images, config.orientation, crop, ct_stats)
    extents = scan.extents if scan is not None and crop != "none" else fingerprint.shapes * fingerprint.spacings
    spacing = config.spacing or target_spacing(fingerprint.spacings)
    if config.input_size:
        input_size = config.input_size
    else:
        largest = extents.max(axis=0)
        if config.spacing is None and config.max_input_voxels:
            spacing = fit_spacing(spacing, largest, config.max_input_voxels, min_input_size)
        cap = None if config.max_input_voxels and config.spacing is None else MAX_AUTO_INPUT
        input_size = [ceil_to_multiple(e / s, m) for e, s, m in zip(largest, spacing, min_input_size, strict=True)]
        input_size = [min(cap, v) if cap else v for v in input_size]
    view = field_of_view(input_size, spacing, extents)
    if view[2] and not tiled:
        if config.input_size:
            where = "preprocessing.input_size"
        elif config.max_input_voxels and config.spacing is None:
            where = "preprocessing.max_input_voxels"
        else:
            where = "the 256-voxel cap per axis with a fixed preprocessing.spacing"
        warnings.warn(f"preprocessing: the model input ({' x '.join(map(str, input_size))} voxels at "
                      f"{' x '.join(f'{s:g}' for s in spacing)} mm) cuts the foreground of {view[2]} of {view[3]} "
                      f"training cases (as little as {view[0]:.0%} inside), set by {where}; leave input_size and "
                      "spacing unset to plan a field that holds every case", stacklevel=2)
    clip, mean, std = config.clip, config.mean, config.std
    if ct_stats:
        samples = scan.samples if scan is not None else []
        clip, mean, std = intensity_statistics(fingerprint.images, clip, samples=samples)
        mean, std = config.mean if config.mean is not None else mean, config.std if config.std is not None else std
    if in_channels is None:
        in_channels = len(fingerprint.images[0]) if fingerprint.images else 1
    return PreprocessingPlan(
        orientation=config.orientation,
        spacing=tuple(float(v) for v in spacing),
        input_size=tuple(int(v) for v in input_size),
        intensity=intensity,
        clip=tuple(float(v) for v in clip) if clip else None,
        mean=None if mean is None else float(mean),
        std=None if std is None else float(std),
        in_channels=in_channels,
        crop=crop,
        field_of_view=view,
    )


def intensity_statistics(
    images: Sequence[tuple[str, ...]], clip: Sequence[float] | None = None, seed: int = 0,
    samples: Sequence[np.ndarray] = (),
) -> tuple[tuple[float, float], float, float]:
    """CT statistics from voxels inside the body (:func:`~medconvnext.data.foreground.body_mask`) of the first
    image of each training case: clip window (given, or the 0.5/99.5 percentiles) and the mean/std of the
    clipped samples. ``samples`` (one array per case, from :func:`scan_foreground`) saves reading the scans again.

    The body, not the air around the patient: the air outside is most of a CT's voxels and made the "window"
    the whole range (-1048 to 80 HU on a chest CT cohort). A scan with no voxel above -500 HU falls back to its
    voxels above its minimum.
    """
    if not images:
        raise UserError("cannot compute CT intensity statistics: no training cases")
    if not samples:
        rng = np.random.default_rng(seed)
        samples = [_body_sample(_volume(paths[0]), rng) for paths in images]
    values = np.concatenate(list(samples))
    if clip is None:
        clip = tuple(float(v) for v in np.percentile(values, CT_PERCENTILES))
    clipped = np.clip(values, clip[0], clip[1])
    std = float(clipped.std()) or 1.0  # a constant dataset must not divide by zero
    return (float(clip[0]), float(clip[1])), float(clipped.mean()), std


def _load_image(path: str):
    from medconvnext.data.transforms import LoadCaseImaged

    # the training loader itself: the same reader, geometry and scaling (scl_slope) as the cached volumes
    return LoadCaseImaged().load(path)


def _load(path: str) -> np.ndarray:
    return np.asarray(_load_image(path), dtype=np.float32).reshape(-1)


def _volume(path: str) -> np.ndarray:
    """The first channel of a scan as an (X, Y, Z) float32 array."""
    return np.asarray(_load_image(path), dtype=np.float32)[0]


def _body_sample(volume: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Up to ``SAMPLES_PER_CASE`` voxels of the body mask (on every ``STATS_STRIDE``-th voxel per axis)."""
    # subsample only axes long enough (as the body box does): a coarse scan's rim must stay one component
    strides = tuple(min(STATS_STRIDE, s) for s in box_strides(volume.shape))
    mask = body_mask(volume, stride=strides)
    grid = volume[::strides[0], ::strides[1], ::strides[2]]
    foreground = grid[mask] if mask.any() else grid[grid > grid.min()]
    if foreground.size == 0:
        foreground = grid.reshape(-1)
    take = min(SAMPLES_PER_CASE, foreground.size)
    return rng.choice(foreground, size=take, replace=False).astype(np.float32)
