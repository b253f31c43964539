"""A DICOM folder read as one regular 3D volume, or refused with one line naming the folder.

ITK's ``ImageSeriesReader`` stacks the slices of a series on a uniform grid whose slice spacing comes from
the first and last positions: a missing slice, a doubled one or an irregular series is stretched silently
(ITK prints a C++ warning, without the folder's name). Before reading the voxels, the header of every slice
is read and the folder is refused (:class:`~medconvnext.data.image_errors.GeometryError`, exit code 2) when it is not
one volume:

- several series (SeriesInstanceUID) in one folder, or DICOM files that belong to none (DICOM is recognised by
  content, :func:`is_dicom_file`: ``IM0001`` and ``*.IMA`` files are read as ``.dcm`` ones);
- slices of different sizes or orientations (ImageOrientationPatient);
- two slices at one position, or slice positions (ImagePositionPatient projected on the slice normal) whose
  gaps differ from the median gap by more than :data:`GAP_TOLERANCE` of it (a missing slice, a variable
  slice spacing);
- positions that drift sideways from the slice normal by more than :data:`DRIFT_TOLERANCE` of a pixel per
  slice (a gantry tilt: ITK would build an orthogonal grid and shear the anatomy).

Resampling onto the true positions is not attempted: a gap is missing anatomy, and a classifier trained on
interpolated slices would learn from voxels no scanner measured.

Values: ITK's series reader takes the pixel type from the first slice, so when RescaleSlope / RescaleIntercept
differ between slices (PET, some derived MR) and the first slice's are integers, every other slice's real values
are truncated to integers (SimpleITK#1636). When the slices' rescale values differ, each slice is therefore
decoded on its own (GDCM applies that slice's own slope and intercept) and the slices are stacked as float32 on
the series' grid: the true values, as dcm2niix writes them.

Multi-frame files (NumberOfFrames > 1: enhanced CT/MR/PET, legacy multi-frame NM/US) keep per-frame positions,
spacing and scaling in functional-group sequences that ITK does not read (it can load them with a wrong slice
spacing and no word): they are refused naming the file; convert them with dcm2niix (``pip install dcm2niix``).

Why not pydicom (+ highdicom) for the whole path: GDCM (inside SimpleITK, already a dependency) decodes every
transfer syntax the tests and reproducers use, per-slice reading fixes the values, and installing pydicom makes
MONAI (imported by every command) warn about its optional pydicom readers; dcm2niix is an external converter
binary, a better tool for the multi-frame conversion than a dependency of every install.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medconvnext.data.capture import library_output, report
from medconvnext.data.image_errors import GeometryError, ImageError, itk_reason

GAP_TOLERANCE = 0.05  # of the median gap: DICOM positions are decimal strings, 5 % is far above their round-off
DRIFT_TOLERANCE = 0.1  # of the in-plane pixel size, per slice
ORIENTATION_ATOL = 1e-4  # direction cosines


DICOM_PREAMBLE = 128  # a DICOM Part-10 file: 128 bytes of preamble, then the magic "DICM"
NOT_DICOM_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".raw", ".hdr", ".img", ".json", ".csv",
                      ".tsv", ".txt")


def is_dicom_file(path: str | Path) -> bool:
    """True for a DICOM file, recognised by its content (the Part-10 preamble and ``DICM``), whatever its name:
    CD and PACS exports write ``IM0001`` or UIDs, Siemens consoles ``*.IMA``."""
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        return path.is_file()
    if path.name.lower().endswith(NOT_DICOM_SUFFIXES):
        return False  # not read: a folder of large scans is not opened file by file
    try:
        with open(path, "rb") as f:
            f.seek(DICOM_PREAMBLE)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def dicom_files(folder: str | Path) -> list[Path]:
    """The DICOM files of a folder (by content, see :func:`is_dicom_file`), hidden files left out, sorted."""
    return sorted(p for p in Path(folder).iterdir() if not p.name.startswith(".") and is_dicom_file(p))


def is_dicom_folder(path: str | Path) -> bool:
    """True for a folder that holds DICOM files (one DICOM series = one image), with or without a ``.dcm`` suffix."""
    path = Path(path)
    return path.is_dir() and any(not p.name.startswith(".") and is_dicom_file(p) for p in path.iterdir())


@dataclass(frozen=True)
class SliceInfo:
    """What the geometry checks need from one file's header."""

    name: str
    size: tuple[int, ...]
    position: np.ndarray  # ImagePositionPatient (mm, LPS)
    orientation: np.ndarray  # ImageOrientationPatient: row and column direction cosines (6,)
    pixel_spacing: tuple[float, float]
    rescale: tuple[float, float] = (1.0, 0.0)  # RescaleSlope, RescaleIntercept (absent: 1, 0)
    frames: int = 1  # NumberOfFrames


def read_dicom_series(folder: str | Path):
    """The folder's one DICOM series as a SimpleITK image, after the checks of this module's docstring.

    Raises:
        GeometryError: the folder is not one regular volume.
        ImageError: its pixel data cannot be decoded (names the first slice that fails).
    """
    import SimpleITK as sitk

    folder = Path(folder)
    with library_output() as scanned:  # GDCM parses every file here: reported with the read, or in its error
        series = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
        names = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])) if series else []
    if not series:
        raise GeometryError(folder, "no readable DICOM series in the folder")
    if len(series) > 1:
        shown = ", ".join(series[:3]) + (" ..." if len(series) > 3 else "")
        raise GeometryError(folder, f"{len(series)} DICOM series in one folder (SeriesInstanceUID {shown}); "
                                    "put each series in its own folder")
    stray = sorted({p.name for p in dicom_files(folder)} - {Path(n).name for n in names})
    if stray:
        raise GeometryError(folder, f"{len(stray)} DICOM file(s) not in the folder's series (e.g. {stray[0]}): "
                                    "unreadable, or another kind of DICOM object")
    slices = [slice_info(name) for name in names]
    check_frames(folder, slices)
    check_slices(folder, slices)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    try:
        with library_output() as captured:
            image = reader.Execute()
            if len({s.rescale for s in slices}) > 1:  # ITK would cast every slice to the first one's type
                image = _per_slice_values(image, names)
    except RuntimeError as exc:
        raise _decode_error(folder, names, captured.summary(more=False) or itk_reason(exc)) from exc
    scanned.extend(captured)
    report(str(folder), scanned)
    return image


def _per_slice_values(series, names: Sequence[str]):
    """``series``' grid with each slice decoded on its own (its own RescaleSlope / Intercept), as float32."""
    import SimpleITK as sitk

    planes = [sitk.GetArrayFromImage(sitk.ReadImage(str(name))).astype(np.float32).reshape(
        series.GetSize()[1], series.GetSize()[0]) for name in names]  # each (rows, columns)
    image = sitk.GetImageFromArray(np.stack(planes))  # (z, y, x) in the series reader's slice order
    image.CopyInformation(series)
    return image


def check_frames(folder: str | Path, slices: Sequence[SliceInfo]) -> None:
    """Refuse multi-frame files: their per-frame geometry and scaling are not read (module docstring)."""
    multi = next((s for s in slices if s.frames > 1), None)
    if multi is not None:
        raise GeometryError(folder, f"{multi.name} is a multi-frame DICOM ({multi.frames} frames in one file), whose "
                                    "per-frame positions, spacing and scaling medconvnext does not read; convert it "
                                    "with dcm2niix (pip install dcm2niix) and use the NIfTI")


def slice_info(name: str) -> SliceInfo:
    """Header of one slice file (no pixel data read)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(name))
    with library_output():
        reader.ReadImageInformation()

    def numbers(tag: str) -> np.ndarray:
        raw = reader.GetMetaData(tag) if reader.HasMetaDataKey(tag) else ""
        try:
            return np.array([float(v) for v in raw.split("\\")], dtype=float)
        except ValueError:
            return np.array([], dtype=float)

    spacing = reader.GetSpacing()
    slope, intercept, frames = numbers("0028|1053"), numbers("0028|1052"), numbers("0028|0008")
    size = reader.GetSize()
    return SliceInfo(Path(name).name, tuple(int(s) for s in size[:2]), numbers("0020|0032"), numbers("0020|0037"),
                     (float(spacing[0]), float(spacing[1])),
                     (float(slope[0]) if slope.size else 1.0, float(intercept[0]) if intercept.size else 0.0),
                     int(frames[0]) if frames.size else (int(size[2]) if len(size) > 2 else 1))


def check_slices(folder: str | Path, slices: Sequence[SliceInfo]) -> None:
    """Refuse slices that do not form one regular volume (see the module docstring); one slice passes."""
    if len(slices) < 2:
        return
    sizes = sorted({s.size for s in slices})
    if len(sizes) > 1:
        raise GeometryError(folder, f"slices of {len(sizes)} sizes in one series ({', '.join(map(str, sizes[:3]))}); "
                                    "expected one volume")
    if any(s.orientation.size != 6 or s.position.size != 3 for s in slices):
        bad = next(s for s in slices if s.orientation.size != 6 or s.position.size != 3)
        raise GeometryError(folder, f"{bad.name} has no valid ImagePositionPatient/ImageOrientationPatient; "
                                    "the slices cannot be placed in space")
    first = slices[0].orientation
    odd = [s for s in slices if not np.allclose(s.orientation, first, atol=ORIENTATION_ATOL)]
    if odd:
        raise GeometryError(folder, f"mixed slice orientations ({odd[0].name}: {_fmt(odd[0].orientation)} vs "
                                    f"{slices[0].name}: {_fmt(first)}); expected one volume")
    normal = np.cross(first[:3], first[3:])
    height = np.array([float(s.position @ normal) for s in slices])
    order = np.argsort(height, kind="stable")
    height, ordered = height[order], [slices[i] for i in order]
    gaps = np.diff(height)
    if (gaps <= 1e-3).any():
        k = int(np.argmax(gaps <= 1e-3))
        raise GeometryError(folder, f"two slices at one position ({ordered[k].name} and {ordered[k + 1].name} at "
                                    f"{height[k]:g} mm along the slice normal); expected one volume")
    nominal = float(np.median(gaps))
    worst = int(np.argmax(np.abs(gaps - nominal)))
    if abs(gaps[worst] - nominal) > GAP_TOLERANCE * nominal:
        raise GeometryError(folder, f"non-uniform slice positions: a gap of {gaps[worst]:.4g} mm between "
                                    f"{ordered[worst].name} and {ordered[worst + 1].name} where the nominal "
                                    f"spacing is {nominal:.4g} mm (a missing slice?); refused rather than stretched")
    positions = np.stack([s.position for s in ordered])
    steps = np.diff(positions, axis=0)
    sideways = np.linalg.norm(steps - np.outer(steps @ normal, normal), axis=1)
    pixel = min(ordered[0].pixel_spacing)
    if sideways.max() > DRIFT_TOLERANCE * pixel:
        raise GeometryError(folder, f"slice positions drift {sideways.max():.3g} mm sideways per slice (gantry tilt "
                                    "or a sheared series); a regular grid would distort the anatomy")


def _fmt(values: np.ndarray) -> str:
    return "\\".join(f"{v:g}" for v in np.round(values, 4))


def _decode_error(folder: Path, names: Sequence[str], said: str) -> ImageError:
    """Name the first slice that fails to decode on its own (the series reader does not say which)."""
    import SimpleITK as sitk

    for name in names:
        try:
            with library_output() as captured:
                sitk.ReadImage(str(name))
        except RuntimeError as exc:
            error = ImageError(folder, f"cannot decode the pixel data of {Path(name).name} "
                                       f"({captured.summary(more=False) or itk_reason(exc)})")
            error.add_note(f"{captured.raw}\n{exc}")  # the raw text, shown with the traceback under --debug
            return error
    return ImageError(folder, f"cannot decode the pixel data ({said})")
