"""Reading scan headers without loading voxels (for the fingerprint and validation)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medconvnext.errors import UserError

NIFTI_SUFFIXES = (".nii", ".nii.gz")


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
    return Header(str(path), tuple(int(s) for s in image.shape[:3]), np.asarray(image.affine, dtype=float))


def _dicom_header(path: Path) -> Header:
    from medconvnext.data.readers import read_sitk_image, sitk_affine

    image = read_sitk_image(path)  # a series has no single header file: read it (DICOM series are small)
    return Header(str(path), tuple(int(s) for s in image.GetSize()[:3]), sitk_affine(image))


def _sitk_header(path: Path) -> Header:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    dim = reader.GetDimension()
    if dim < 3:
        raise UserError(f"{path}: a {dim}D image; expected a 3D volume")
    spacing = np.array(reader.GetSpacing()[:3])
    direction = np.array(reader.GetDirection()).reshape(dim, dim)[:3, :3]
    origin = np.array(reader.GetOrigin()[:3])
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing
    affine[:3, 3] = origin
    affine[:2] *= -1  # ITK world is LPS; ours is RAS
    return Header(str(path), tuple(int(s) for s in reader.GetSize()[:3]), affine)
