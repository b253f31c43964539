"""Validation of every image of a case before training: readable, 3D, finite, non-constant, sane geometry.

Headers are checked before any voxel is read, so a corrupt header claiming a huge size never allocates it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medconvnext.data.datalist import Case, Datalist
from medconvnext.data.io import ImageError, itk_affine, nifti_affine, read_itk_information
from medconvnext.errors import UserError

MAX_AXIS = 4096
MAX_VOXELS = 512 * 1024 * 1024  # 512 Mi voxels: 2 GiB as float32, more than any sane single scan
NIFTI_SUFFIXES = (".nii", ".nii.gz")


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


def validate_case(case: Case, max_voxels: int = MAX_VOXELS) -> list[str]:
    """Problems of every image of ``case``, each ``"<path>: <problem>"``; empty when all are usable."""
    return [f"{r.path}: {p}" for r in inspect_case(case, max_voxels) for p in r.problems]


def validate_datalist(datalist: Datalist, skip_bad: bool = False) -> tuple[Datalist, list[str]]:
    """Validate every case. Without ``skip_bad`` the first bad image is a UserError (one line, plus how many
    more); with it, bad cases are dropped and their problems returned (to warn about and store in the run)."""
    problems: list[str] = []
    good: list[Case] = []
    for case in datalist.cases:
        found = validate_case(case)
        problems += found
        if not found:
            good.append(case)
    if problems and not skip_bad:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise UserError(f"{problems[0]}{more}; data.skip_bad=true leaves bad cases out")
    return Datalist(good, datalist.classes, datalist.source, dict(datalist.extra, skipped=problems)), problems


def inspect_case(case: Case, max_voxels: int = MAX_VOXELS) -> list[ImageReport]:
    """One report per image of the case."""
    return [inspect_image(image, max_voxels) for image in case.images]


def inspect_image(path: str | Path, max_voxels: int = MAX_VOXELS) -> ImageReport:
    """Read and check one image: header first (size, spacing, affine), then the voxels."""
    report = ImageReport(str(path))
    try:
        shape, affine, load = _open(Path(path))
    except ImageError as exc:  # the geometry rule's or the DICOM checks' own one-line reason
        report.problems.append(exc.problem)
        return report
    except Exception as exc:  # noqa: BLE001 - whatever the reader says, the file is unusable
        report.problems.append(f"unreadable ({_reason(exc)})")
        return report
    report.problems += _shape_problems(shape, max_voxels)
    report.shape, report.channels = tuple(shape[:3]), int(np.prod(shape[3:], dtype=np.int64)) if len(shape) > 3 else 1
    report.problems += _geometry_problems(affine) or _raw_nifti_spacing_problems(Path(path))
    if report.problems:
        return report  # don't read voxels whose header is already wrong
    report.spacing = tuple(round(float(v), 4) for v in np.linalg.norm(affine[:3, :3], axis=0))
    report.orientation = _orientation(affine)
    try:
        data = load()
    except Exception as exc:  # noqa: BLE001
        report.problems.append(f"cannot read the voxels, truncated or corrupt file ({_reason(exc)})")
        return report
    report.problems += _voxel_problems(data)
    if not report.problems:
        sample = data.reshape(-1)[:: max(1, data.size // 1_000_000)]  # a strided sample keeps this cheap
        report.percentiles = tuple(float(v) for v in np.percentile(sample, [0.5, 50, 99.5]))
    return report


def _open(path: Path):
    """(full shape in (x, y, z, extra...) order, RAS affine, function loading the voxels)."""
    if not path.exists():
        raise FileNotFoundError("no such file or folder")
    if path.name.lower().endswith(NIFTI_SUFFIXES):
        import nibabel as nib

        image = nib.load(str(path))
        return tuple(int(s) for s in image.shape), nifti_affine(image, path), lambda: np.asanyarray(image.dataobj)
    from medconvnext.data.readers import read_sitk_image, sitk_affine, sitk_array

    if path.is_dir():
        image = read_sitk_image(path)
        return _sitk_shape(image), sitk_affine(image), lambda: sitk_array(image)
    reader = read_itk_information(path)  # header only; voxels are read after the checks
    shape = tuple(int(s) for s in reader.GetSize())
    if reader.GetNumberOfComponents() > 1:
        shape += (int(reader.GetNumberOfComponents()),)
    if reader.GetDimension() < 3:
        raise ValueError(f"a {reader.GetDimension()}D image; expected a 3D volume")
    affine = itk_affine(reader.GetSpacing(), reader.GetDirection(), reader.GetOrigin())
    return shape, affine, lambda: sitk_array(read_sitk_image(path))


def _sitk_shape(image) -> tuple[int, ...]:
    shape = tuple(int(s) for s in image.GetSize())
    return shape + ((image.GetNumberOfComponentsPerPixel(),) if image.GetNumberOfComponentsPerPixel() > 1 else ())


def _shape_problems(shape: tuple[int, ...], max_voxels: int) -> list[str]:
    if len(shape) < 3:
        return [f"a {len(shape)}D image of shape {shape}; expected a 3D volume"]
    if len(shape) == 4 and shape[3] > 1:
        return [f"a 4D series with {shape[3]} frames (shape {shape}); expected a 3D volume"]
    if len(shape) > 5 or (len(shape) == 5 and shape[3] != 1):
        return [f"shape {shape} is not 3D or 3D + channels"]
    if any(s < 1 or s > MAX_AXIS for s in shape[:3]):
        return [f"implausible size {shape[:3]}; each axis must be 1..{MAX_AXIS}"]
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
        return [f"every voxel equals {data.reshape(-1)[0]} (an empty or blank volume)"]
    return []


def _orientation(affine: np.ndarray) -> str:
    import nibabel as nib

    return "".join(nib.orientations.aff2axcodes(affine))


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__
