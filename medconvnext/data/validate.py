"""The one validator of input images, run by ``data check``, ``train``, ``cv``, ``evaluate`` and ``predict`` before
any work or any write: readable, one value per voxel (not RGB), 3D (not a 2D slice, a one-slice volume or a 4D
series), finite, non-constant, sane geometry, and values a scan can hold:

- no voxel beyond :data:`MAX_ABS_VALUE` in magnitude. No CT (HU, extended scales included), MR or PET
  (Bq/mL, SUV) voxel comes near it; a value beyond is a fill or "no data" value (3.0e38, near FLT_MAX) or a
  scaling error (a NIfTI ``scl_slope`` of 1e37), and it would overflow float32 or collapse the per-case
  normalisation;
- a volume whose per-case z-score in float32 (what the model is fed) keeps fewer than 1/:data:`COLLAPSE_RATIO`
  of its distinct values has collapsed: the model would see a blank volume (one extreme voxel dominates the
  standard deviation). Both name the file, the value and the voxel.

A case of several images (``image_t1,image_t2``: stacked as channels, each resampled onto the first image's grid)
is refused when another image covers less than :data:`MIN_OVERLAP` of the first image's world box (the
axis-aligned RAS box of its voxels): it would resample to a mostly empty channel (another field of view, another
subject's scan, an unregistered series). The problem names the case, the image and the overlap.

Headers are checked before any voxel is read, so a corrupt header claiming a huge size never allocates it. The
result of each image is cached in ``<cache dir>/image_checks.json`` keyed by the digest of the file's bytes
(:mod:`medconvnext.data.content`) and by the source of the checks, so a second run on the same files reads no
voxels for validation, and a rewritten file or a changed check is validated again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from medconvnext.data.datalist import Case, Datalist
from medconvnext.data.io import NIFTI_SUFFIXES, ImageError, open_image, read_itk_information
from medconvnext.data.leakage import remember_hashes, voxel_hash
from medconvnext.errors import UserError
from medconvnext.fileio import write_json_cache

MAX_AXIS = 4096
MAX_ABS_VALUE = 1e7  # |voxel| beyond this is a fill value or a scaling error, not a measurement (module docstring)
MIN_OVERLAP = 0.5  # another image of a case must cover at least half of the first image's world box
COLLAPSE_RATIO = 10  # the normalised sample keeps fewer than 1/10 of its distinct values: refused
MAX_VOXELS = 512 * 1024 * 1024  # 512 Mi voxels: 2 GiB as float32, more than any sane single scan
CHECKS_CACHE_NAME = "image_checks.json"


class HasImages(Protocol):
    """A case of a datalist or a scan given to ``predict``: its image path(s), several = channels."""

    images: tuple[str, ...]


@dataclass
class ImageReport:
    """What ``data check`` shows for one image, plus the problems found (empty when the image is fine)."""

    path: str
    problems: list[str] = field(default_factory=list)
    shape: tuple[int, ...] = ()
    channels: int = 1
    spacing: tuple[float, ...] = ()
    orientation: str = ""
    percentiles: tuple[float, ...] = ()  # 0.5, 50, 99.5
    box: tuple[float, ...] = ()  # world (RAS) box of the voxels: x, y, z min then x, y, z max (mm)
    # the leakage audit's hash of the voxels, taken while they are decoded here (not cached with the report)
    voxel_hash: str | None = field(default=None, repr=False, compare=False)


def validate_case(case: HasImages, max_voxels: int = MAX_VOXELS) -> list[str]:
    """Problems of every image of ``case``, each ``"<path>: <problem>"``; empty when all are usable."""
    return [f"{r.path}: {p}" for r in inspect_case(case, max_voxels) for p in r.problems]


def require_valid(cases: Sequence[HasImages], hint: str = "") -> None:
    """The gate of ``predict`` and ``evaluate``: UserError naming the first bad image and what is wrong with it
    (one line, plus how many more), before any model is loaded or anything written."""
    reports = iter(inspect_images([image for case in cases for image in case.images]))
    per_case = [[next(reports) for _ in case.images] for case in cases]
    for case, case_reports in zip(cases, per_case, strict=True):
        add_overlap_problems(getattr(case, "case_id", ""), case_reports)
    problems = [f"{r.path}: {p}" for case_reports in per_case for r in case_reports for p in r.problems]
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise UserError(f"{problems[0]}{more}{hint}")


def validate_datalist(datalist: Datalist, skip_bad: bool = False) -> tuple[Datalist, list[str]]:
    """Validate every case. Without ``skip_bad`` the first bad image is a UserError (one line, plus how many
    more); with it, bad cases are dropped and their problems returned (to warn about and store in the run)."""
    problems: list[str] = []
    good: list[Case] = []
    for case, reports in inspect_datalist(datalist):
        found = [f"{r.path}: {p}" for r in reports for p in r.problems]
        problems += found
        if not found:
            good.append(case)
    if problems and not skip_bad:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise UserError(f"{problems[0]}{more}; data.skip_bad=true leaves bad cases out")
    return Datalist(good, datalist.classes, datalist.source, dict(datalist.extra, skipped=problems)), problems


def inspect_datalist(datalist: Datalist, max_voxels: int = MAX_VOXELS) -> list[tuple[Case, list[ImageReport]]]:
    """(case, one report per image) for every case, in order; all images inspected in one pass over the caches."""
    reports = iter(inspect_images([image for case in datalist.cases for image in case.images], max_voxels))
    out = [(case, [next(reports) for _ in case.images]) for case in datalist.cases]
    for case, case_reports in out:
        add_overlap_problems(case.case_id, case_reports)
    return out


def add_overlap_problems(case_id: str, reports: Sequence[ImageReport]) -> None:
    """Add a problem to each image of a case that covers less than :data:`MIN_OVERLAP` of its first image's box."""
    reference = reports[0] if reports else None
    if reference is None or len(reference.box) != 6:
        return
    ref_lo, ref_hi = np.array(reference.box[:3]), np.array(reference.box[3:])
    for report in reports[1:]:
        if len(report.box) != 6:
            continue  # unreadable: its own problem says why
        lo, hi = np.maximum(ref_lo, report.box[:3]), np.minimum(ref_hi, report.box[3:])
        overlap = float(np.prod(np.clip(hi - lo, 0, None)) / np.prod(ref_hi - ref_lo))
        if overlap < MIN_OVERLAP:
            case = f"case {case_id}: " if case_id else ""
            report.problems.append(
                f"{case}covers {overlap:.0%} of the world box of {Path(reference.path).name}, the case's first image "
                f"(at least {MIN_OVERLAP:.0%} needed): resampled onto its grid this channel would be mostly empty; "
                "give images of the same anatomy, registered to each other")


def inspect_case(case: HasImages, max_voxels: int = MAX_VOXELS) -> list[ImageReport]:
    """One report per image of the case (with the overlap check of a case of several images)."""
    reports = inspect_images(case.images, max_voxels)
    add_overlap_problems(getattr(case, "case_id", ""), reports)
    return reports


def inspect_images(paths: Iterable[str | Path], max_voxels: int = MAX_VOXELS) -> list[ImageReport]:
    """:func:`inspect_image` of each path, from the cache (keyed by content) when the file was checked before."""
    from medconvnext.data.content import default_memo_dir, file_digests

    paths = list(paths)
    digests = file_digests(paths, skip_unreadable=True)  # one call: the digest memo is read and written once
    cache_path = default_memo_dir() / CHECKS_CACHE_NAME
    cache: dict | None = None
    changed = False
    reports, hashes = [], {}
    for path in paths:
        content = digests.get(str(Path(path).resolve()))
        if content is None:  # missing or unreadable: nothing to cache
            reports.append(inspect_image(path, max_voxels))
            continue
        key = _checks_key(content, Path(path).name, max_voxels)
        if cache is None:
            cache = _load_checks(cache_path)
        report = _cached_report(cache.get(key), path)
        if report is None:
            report = inspect_image(path, max_voxels)
            entry = asdict(report) | {"path": str(Path(path).resolve())}
            if entry.pop("voxel_hash") is not None:  # kept by the leakage audit's own cache, not here
                hashes[content] = (entry["path"], report.voxel_hash)
            cache[key] = entry
            changed = True
        reports.append(report)
    if changed and cache is not None:
        _save_checks(cache_path, cache)
    remember_hashes(hashes)  # the audit that follows validation need not decode these files again
    return reports


def _cached_report(entry: object, path: str | Path) -> ImageReport | None:
    if not isinstance(entry, dict):
        return None
    try:
        return ImageReport(str(path), [str(p) for p in entry["problems"]], tuple(entry["shape"]),
                           int(entry["channels"]), tuple(entry["spacing"]), str(entry["orientation"]),
                           tuple(entry["percentiles"]), tuple(entry["box"]))
    except (KeyError, TypeError, ValueError):
        return None


def inspect_image(path: str | Path, max_voxels: int = MAX_VOXELS) -> ImageReport:
    """Read and check one image: header first (size, components, spacing, affine), then the voxels."""
    import logging

    from nibabel.imageglobals import logger

    level = logger.level
    logger.setLevel(logging.CRITICAL)  # nibabel logs what it repairs (a zero pixdim): the report names it instead
    try:
        return _inspect_image(path, max_voxels)
    finally:
        logger.setLevel(level)


def _inspect_image(path: str | Path, max_voxels: int) -> ImageReport:
    report = ImageReport(str(path))
    try:
        opened = open_image(path)
    except ImageError as exc:  # the geometry rule's or the DICOM checks' own one-line reason
        report.problems.append(exc.problem)
        return report
    except Exception as exc:  # noqa: BLE001 - whatever the reader says, the file is unusable
        report.problems.append(f"unreadable ({_reason(exc)})")
        return report
    shape, affine = opened.shape, opened.affine
    report.problems += _component_problems(Path(path), shape) or _shape_problems(shape, max_voxels)
    report.shape, report.channels = tuple(shape[:3]), int(np.prod(shape[3:], dtype=np.int64)) if len(shape) > 3 else 1
    report.problems += _geometry_problems(affine) or _raw_nifti_spacing_problems(Path(path))
    if report.problems:
        return report  # don't read voxels whose header is already wrong
    report.spacing = tuple(round(float(v), 4) for v in np.linalg.norm(affine[:3, :3], axis=0))
    report.box = _world_box(affine, shape[:3])
    report.orientation = _orientation(affine)
    try:
        data = opened.load()
    except Exception as exc:  # noqa: BLE001
        report.problems.append(f"cannot read the voxels, truncated or corrupt file ({_reason(exc)})")
        return report
    report.voxel_hash = voxel_hash(data)
    report.problems += _voxel_problems(data) or _value_problems(Path(path), data)
    if not report.problems:
        # a strided sample in memory order: reshape(-1) of a Fortran-ordered scan would copy all of it
        sample = data.ravel(order="K")[:: max(1, data.size // 1_000_000)]
        report.percentiles = tuple(float(v) for v in np.percentile(sample, [0.5, 50, 99.5]))
    return report


def _world_box(affine: np.ndarray, shape: Sequence[int]) -> tuple[float, ...]:
    """The axis-aligned RAS box (mm) around the voxels' outer faces: min x, y, z then max x, y, z."""
    corners = np.array([[i, j, k] for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5)
                        for k in (-0.5, shape[2] - 0.5)])
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    return tuple(round(float(v), 4) for v in (*world.min(axis=0), *world.max(axis=0)))


def _component_problems(path: Path, shape: tuple[int, ...]) -> list[str]:
    """An RGB(A) or vector image: several values per voxel that are not channels of one scan."""
    if path.name.lower().endswith(NIFTI_SUFFIXES):
        import nibabel as nib

        names = nib.load(str(path)).get_data_dtype().names  # RGB24 / RGBA32 NIfTI: a structured dtype
        if names:
            kind = "an RGBA" if len(names) == 4 else "an RGB" if len(names) == 3 else "a multi-component"
            return [f"{kind} image ({len(names)} colour components per voxel); expected a grayscale 3D volume "
                    "(one value per voxel)"]
        return []
    if not path.is_dir() and len(shape) > 3 and _sitk_components(path) > 1:
        return [f"an image with {shape[-1]} components per voxel (RGB or vector); expected a grayscale 3D volume "
                "(one value per voxel)"]
    return []


def _sitk_components(path: Path) -> int:
    return int(read_itk_information(path).GetNumberOfComponents())


def _shape_problems(shape: tuple[int, ...], max_voxels: int) -> list[str]:
    if len(shape) < 3:
        return [f"a {len(shape)}D image (shape {shape}); expected a 3D volume"]
    if len(shape) == 4 and shape[3] > 1:
        return [f"a 4D series of {shape[3]} frames (shape {shape}); expected a 3D volume"]
    if len(shape) > 5 or (len(shape) == 5 and shape[3] != 1):
        return [f"a {len(shape)}D image (shape {shape}); expected a 3D volume (or 3D + channels)"]
    if any(s < 1 or s > MAX_AXIS for s in shape[:3]):
        return [f"implausible size {shape[:3]}; each axis must be 1..{MAX_AXIS}"]
    if 1 in shape[:3]:
        return [f"a single slice (shape {shape[:3]}, one voxel thick); expected a 3D volume"]
    total = int(np.prod(shape, dtype=np.int64))
    if total > max_voxels:
        return [f"{total} voxels is more than the limit of {max_voxels}"]
    return []


def _geometry_problems(affine: np.ndarray) -> list[str]:
    if not np.isfinite(affine).all():
        return ["the affine (voxel-to-world matrix) has NaN/Inf entries"]
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if (spacing <= 0).any():
        return [f"zero or negative spacing {tuple(round(float(v), 4) for v in spacing)}"]
    if abs(np.linalg.det(affine[:3, :3])) < 1e-6 * float(np.prod(spacing)):
        return ["degenerate affine (its axes are not independent)"]
    return []


def _raw_nifti_spacing_problems(path: Path) -> list[str]:
    """nibabel silently replaces zero or negative header spacings (pixdim) with 1 or |value|: look at the raw header."""
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        return []
    import nibabel as nib
    from nibabel.openers import ImageOpener

    image = nib.load(str(path))
    with ImageOpener(str(path)) as f:
        raw = type(image.header).from_fileobj(f, check=False)
    pixdim = np.asarray(raw["pixdim"][1:4], dtype=float)
    if (pixdim <= 0).any():
        return [f"zero or negative spacing in the header (pixdim {tuple(round(float(v), 4) for v in pixdim)})"]
    return []


def _voxel_problems(data: np.ndarray) -> list[str]:
    data = np.asarray(data)
    if np.issubdtype(data.dtype, np.floating):
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        if bad:
            return [f"{bad} NaN/Inf voxel(s)"]
    if data.size and data.min() == data.max():
        return [f"every voxel equals {data.flat[0]} (an empty or blank volume)"]
    return []


def _value_problems(path: Path, data: np.ndarray) -> list[str]:
    """Values no scan holds, or a normalisation they would collapse (the module docstring)."""
    data = np.asarray(data)
    if not np.issubdtype(data.dtype, np.number) or data.dtype.itemsize < 4 and np.issubdtype(data.dtype, np.integer):
        return []  # 8- and 16-bit integers cannot reach the bound
    lo, hi = float(data.min()), float(data.max())  # no float64 copy of a full-size CT
    if max(abs(lo), abs(hi)) > MAX_ABS_VALUE:
        return [f"{_extreme(data, lo, hi)} is beyond {MAX_ABS_VALUE:g} in magnitude, which no CT, MR or PET value "
                f"reaches (a fill value or a scaling error{_scaling(path)}); fix or mask it in the file"]
    sample = data.ravel(order="K")[:: max(1, data.size // 1_000_000)].astype(np.float32)
    normalised = (sample - sample.mean(dtype=np.float32)) / max(float(sample.std(dtype=np.float32)), 1e-30)
    before, after = len(np.unique(sample)), len(np.unique(normalised.astype(np.float32)))
    if after * COLLAPSE_RATIO < before:
        return [f"{_extreme(data, lo, hi)} dominates the normalisation: its {before} distinct values collapse to "
                f"{after} after the per-case z-score (the model would see a blank volume); fix or mask that value "
                "in the file"]
    return []


def _extreme(data: np.ndarray, lo: float, hi: float) -> str:
    """``value 3e+38 at voxel (0, 0, 0)``: the value farthest from zero and where it is."""
    flat = int(np.argmax(data)) if abs(hi) >= abs(lo) else int(np.argmin(data))
    where = np.unravel_index(flat, data.shape)
    return f"value {float(data[where]):.4g} at voxel {tuple(int(i) for i in where[:3])}"


def _scaling(path: Path) -> str:
    """``, scl_slope 1e+37`` for a NIfTI whose header scales its values, else ''."""
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        return ""
    import nibabel as nib

    slope, inter = nib.load(str(path)).dataobj.slope, nib.load(str(path)).dataobj.inter
    return f" such as scl_slope {slope:g}, scl_inter {inter:g}" if (slope, inter) != (1.0, 0.0) else ""


def _checks_key(content: str, name: str, max_voxels: int) -> str:
    """Content digest + file name suffix + the limits + the code and library versions that check it (after a
    change to any check or reader, every file is checked again)."""
    from medconvnext.data.content import source_digest

    suffix = "".join(Path(name).suffixes[-2:]).lower()
    source = source_digest(("numpy", "nibabel", "SimpleITK"))
    return hashlib.sha256(f"{source}|{content}|{suffix}|{max_voxels}".encode()).hexdigest()[:32]


def _load_checks(path: Path) -> dict:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return values if isinstance(values, dict) else {}


def _save_checks(path: Path, entries: dict) -> None:
    """Atomically; entries of files that no longer exist are dropped; a read-only cache folder is ignored."""
    kept = {k: v for k, v in entries.items() if isinstance(v, dict) and Path(str(v.get("path"))).exists()}
    write_json_cache(path, kept)


def _orientation(affine: np.ndarray) -> str:
    import nibabel as nib

    return "".join(nib.orientations.aff2axcodes(affine))


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__
