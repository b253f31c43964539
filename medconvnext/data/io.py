"""Image I/O: the one place that opens a scan, reads its header, its voxels, and decides its geometry.

Every part that reads a scan goes through here: the validator (:func:`open_image`: header first, voxels on
demand), the fingerprint and plan (:func:`read_header`), the leakage audit (:func:`read_voxels`), and the MONAI
readers of the training and predict loader (:mod:`medconvnext.data.readers`, and so the cache, Grad-CAM and
window maps). The voxel-to-world affine is decided by one rule:

- **NIfTI** (``.nii``, ``.nii.gz``, and ``.hdr`` + ``.img`` pairs; an Analyze 7.5 ``.hdr`` has no transform: nibabel's
  pixdim affine, which assumes Analyze's radiological LAS): :func:`nifti_affine`, nibabel's rule (the NIfTI-1
  standard's): the sform when its code is > 0,
  else the qform when its code is > 0, else the pixdim-only fallback. When both codes are > 0 and the two
  transforms disagree (:data:`XFORM_ATOL_MM`), the file is **refused** (:class:`GeometryError`) if they
  disagree on voxel spacing or on axis orientation: the voxels the model sees (after reorienting and
  resampling) and where a saliency map lands would then depend on which tool reads the file (nibabel, FSL,
  MONAI read the sform; ITK-SNAP may read the qform; MONAI's header "correction" may swap them), and no rule
  can know which one the scanner meant. If they agree on both and differ only in position or a small
  rotation (e.g. a sform to an aligned/template space, a qform to the scanner's), the model input is the
  same either way: the sform is followed, with one :class:`GeometryWarning` naming the file.
  pixdim is never consulted when a transform is set (MONAI's ``correct_nifti_header_if_necessary`` replaces
  the sform by the qform when pixdim disagrees with it; :class:`~medconvnext.data.readers.NiftiReader` skips it).
- **DICOM series, NRRD, MHA/MHD**: ITK's geometry (spacing, direction, origin), LPS turned to RAS
  (:func:`itk_affine`); a DICOM folder must be one regular volume (:mod:`medconvnext.data.dicom`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medconvnext.data.capture import library_output, report
from medconvnext.data.detached import data_files

# the errors and the DICOM detection live below this module (dicom and detached need them, and io needs dicom):
# re-exported, as every reader of a scan imports them from here
from medconvnext.data.dicom import (  # noqa: F401
    dicom_files,
    is_dicom_file,
    is_dicom_folder,
    read_dicom_series,
)
from medconvnext.data.image_errors import GeometryError, GeometryWarning, ImageError, itk_reason  # noqa: F401
from medconvnext.errors import UserError

NIFTI_SUFFIXES = (".nii", ".nii.gz", ".hdr")  # .hdr: a NIfTI pair or an Analyze 7.5 header (+ its .img), nibabel
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
XFORM_ATOL_MM = 1e-3  # sform/qform entries closer than this (mm) agree: float32 storage is far finer
SPACING_RTOL = 1e-3  # spacings within 0.1 % agree (the qform's are float32 pixdim, the sform's column norms)

_warned: set[str] = set()


def _describe(affine: np.ndarray) -> str:
    import nibabel as nib

    spacing = "x".join(f"{v:g}" for v in np.round(np.linalg.norm(affine[:3, :3], axis=0), 4))
    return f"{''.join(nib.orientations.aff2axcodes(affine))} {spacing} mm"


def nifti_affine(image, path: str | Path | None = None) -> np.ndarray:
    """The voxel-to-RAS affine (4, 4) of a nibabel NIfTI image by the rule in this module's docstring.

    Raises:
        GeometryError: sform and qform are both set and disagree on spacing or orientation.
    """
    import nibabel as nib

    path = str(path or image.get_filename() or "<image>")
    header = image.header
    if "sform_code" not in header:  # Analyze 7.5 (.hdr/.img): no transforms, pixdim only (nibabel's affine)
        return np.asarray(image.affine, dtype=float)
    s_code, q_code = int(header["sform_code"]), int(header["qform_code"])
    chosen = np.asarray(image.affine, dtype=float)  # nibabel: sform if code > 0, else qform if > 0, else pixdim
    if s_code <= 0 or q_code <= 0:
        return chosen
    sform = np.asarray(image.get_sform(), dtype=float)
    qform = np.asarray(image.get_qform(), dtype=float)
    if np.allclose(sform, qform, rtol=0, atol=XFORM_ATOL_MM):
        return chosen
    s_spacing, q_spacing = np.linalg.norm(sform[:3, :3], axis=0), np.linalg.norm(qform[:3, :3], axis=0)
    same_spacing = np.allclose(s_spacing, q_spacing, rtol=SPACING_RTOL, atol=0)
    same_axes = nib.orientations.aff2axcodes(sform) == nib.orientations.aff2axcodes(qform)
    if not (same_spacing and same_axes):
        raise GeometryError(path, f"the sform (code {s_code}: {_describe(sform)}) and the qform (code {q_code}: "
                                  f"{_describe(qform)}) disagree, so tools read this scan differently; rewrite "
                                  "the header with one geometry (e.g. nibabel: img.set_qform(img.get_sform()))")
    if path not in _warned:
        _warned.add(path)
        shift = float(np.linalg.norm(sform[:3, 3] - qform[:3, 3]))
        warnings.warn(GeometryWarning(
            f"{path}: the sform (code {s_code}) and the qform (code {q_code}) differ (origins {shift:.3g} mm apart) "
            "but agree on spacing and orientation; following the sform (the NIfTI rule), the model input is "
            "the same either way"), stacklevel=2)
    return chosen


def read_itk_information(path: str | Path):
    """A SimpleITK ``ImageFileReader`` with the header read (no voxels); ImageError naming the file if it fails."""
    import SimpleITK as sitk

    data_files(path)  # a header's data file must exist inside its folder before ITK follows the path
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with library_output() as captured:
            reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ImageError(path, f"unreadable ({itk_reason(exc)})") from exc
    report(str(path), captured)
    return reader


def itk_affine(spacing, direction, origin) -> np.ndarray:
    """Voxel (x, y, z) -> RAS affine (4, 4) from ITK's spacing, direction (row-major, dim x dim) and origin
    (ITK's world is LPS: x and y are flipped)."""
    dim = int(round(len(direction) ** 0.5))
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(direction, dtype=float).reshape(dim, dim)[:3, :3] * np.asarray(spacing[:3], float)
    affine[:3, 3] = np.asarray(origin[:3], dtype=float)
    affine[:2] *= -1
    return affine


@dataclass(frozen=True)
class Header:
    """Geometry of one scan: array shape (spatial, in file order), voxel->RAS affine."""

    path: str
    shape: tuple[int, ...]
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along each array axis (mm)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    def axis_to_world(self) -> list[int]:
        """For each array axis, the world axis (0=x R/L, 1=y A/P, 2=z S/I) it runs along most."""
        import nibabel as nib

        return [int(a) for a in nib.orientations.io_orientation(self.affine)[:, 0]]

    def world_spacing(self) -> tuple[float, float, float]:
        """Spacing reordered to world axes (x, y, z): what it becomes after reorienting to RAS."""
        out = [0.0, 0.0, 0.0]
        for axis, world in enumerate(self.axis_to_world()):
            out[world] = self.spacing[axis]
        return tuple(out)  # type: ignore[return-value]

    def world_shape(self) -> tuple[int, int, int]:
        """Spatial shape reordered to world axes (x, y, z)."""
        out = [0, 0, 0]
        for axis, world in enumerate(self.axis_to_world()):
            out[world] = int(self.shape[axis])
        return tuple(out)  # type: ignore[return-value]


def read_header(path: str | Path) -> Header:
    """Header of a NIfTI (nibabel) or NRRD/MHA/MHD file (SimpleITK); UserError if unreadable."""
    path = Path(path)
    try:
        if path.name.lower().endswith(NIFTI_SUFFIXES):
            return _nifti_header(path)
        if path.is_dir():
            return _dicom_header(path)
        return _sitk_header(path)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file for the user
        raise UserError(f"{path}: cannot read the image header ({type(exc).__name__}: {exc})") from None


def _nifti_header(path: Path) -> Header:
    import nibabel as nib

    image = nib.load(str(path))
    return Header(str(path), tuple(int(s) for s in image.shape[:3]), nifti_affine(image, path))


def _dicom_header(path: Path) -> Header:
    image = read_sitk_image(path)  # a series has no single header file: read it (DICOM series are small)
    return Header(str(path), tuple(int(s) for s in image.GetSize()[:3]), sitk_affine(image))


def _sitk_header(path: Path) -> Header:
    reader = read_itk_information(path)
    dim = reader.GetDimension()
    if dim < 3:
        raise UserError(f"{path}: a {dim}D image; expected a 3D volume")
    affine = itk_affine(reader.GetSpacing(), reader.GetDirection(), reader.GetOrigin())
    return Header(str(path), tuple(int(s) for s in reader.GetSize()[:3]), affine)


def read_sitk_image(path: str | Path):
    """Read a file with SimpleITK, or a folder's one DICOM series (:func:`~medconvnext.data.dicom.read_dicom_series`:
    refused unless it is one regular volume). What ITK prints is reported as one warning naming the file.

    Raises:
        ImageError: an unreadable file (ITK's reason), or a DICOM folder that is not one regular volume.
    """
    import SimpleITK as sitk

    path = Path(path)
    if path.is_dir():
        return read_dicom_series(path)
    data_files(path)
    try:
        with library_output() as captured:
            image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ImageError(path, f"unreadable ({itk_reason(exc)})") from exc
    report(str(path), captured)
    return image


def sitk_affine(image) -> np.ndarray:
    """Voxel (x, y, z) -> RAS world affine (4, 4) of a SimpleITK image (:func:`itk_affine`)."""
    return itk_affine(image.GetSpacing(), image.GetDirection(), image.GetOrigin())


def sitk_array(image) -> np.ndarray:
    """Voxels as (x, y, z[, components]): SimpleITK gives (z, y, x[, components])."""
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image)
    spatial = image.GetDimension()
    order = list(range(spatial))[::-1] + list(range(spatial, array.ndim))
    return np.ascontiguousarray(array.transpose(order))


@dataclass(frozen=True)
class OpenImage:
    """A scan whose header is read: its full shape, (x, y, z, extra...) in file order, its voxel-to-RAS affine
    (4, 4), and ``load`` reading the voxels (as stored, same axis order) only when called."""

    shape: tuple[int, ...]
    affine: np.ndarray
    load: Callable[[], np.ndarray]


def open_image(path: str | Path) -> OpenImage:
    """Open a NIfTI file (nibabel), a DICOM series folder or an ITK file (SimpleITK) without reading its voxels
    (a DICOM series is read whole: it has no single header).

    Raises:
        FileNotFoundError: nothing at ``path``.
        ImageError: the geometry rule or the DICOM checks refuse it, or ITK cannot read it.
        ValueError: an ITK image of fewer than 3 dimensions.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError("no such file or folder")
    if path.is_file():
        data_files(path)  # a .hdr's .img, a .mhd's .raw: inside the header's folder and present, or refused
    if path.name.lower().endswith(NIFTI_SUFFIXES):
        import nibabel as nib

        image = nib.load(str(path))
        return OpenImage(tuple(int(s) for s in image.shape), nifti_affine(image, path),
                         lambda: np.asanyarray(image.dataobj))
    if path.is_dir():
        series = read_sitk_image(path)
        return OpenImage(_sitk_shape(series), sitk_affine(series), lambda: sitk_array(series))
    reader = read_itk_information(path)  # header only; voxels are read when asked for
    shape = tuple(int(s) for s in reader.GetSize())
    if reader.GetNumberOfComponents() > 1:
        shape += (int(reader.GetNumberOfComponents()),)
    if reader.GetDimension() < 3:
        raise ValueError(f"a {reader.GetDimension()}D image; expected a 3D volume")
    affine = itk_affine(reader.GetSpacing(), reader.GetDirection(), reader.GetOrigin())
    return OpenImage(shape, affine, lambda: sitk_array(read_sitk_image(path)))


def _sitk_shape(image) -> tuple[int, ...]:
    shape = tuple(int(s) for s in image.GetSize())
    return shape + ((image.GetNumberOfComponentsPerPixel(),) if image.GetNumberOfComponentsPerPixel() > 1 else ())


def read_voxels(path: str | Path) -> np.ndarray:
    """The stored voxel array, no geometry applied: nibabel for a NIfTI file, SimpleITK for everything else
    (DICOM folders included), (x, y, z[, extra]) either way.

    Raises:
        ImageError: ITK cannot read it, or a DICOM folder that is not one regular volume.
    """
    path = Path(path)
    if path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES):
        import nibabel as nib

        return np.asanyarray(nib.load(str(path)).dataobj)
    return sitk_array(read_sitk_image(path))
