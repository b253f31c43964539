"""A MONAI ImageReader over SimpleITK: DICOM series folders, NRRD, MHA/MHD (and anything else ITK reads).

Arrays come back in the same axis convention as MONAI's NibabelReader, (x, y, z[, channels]), with a
RAS affine, so Orientationd/Spacingd treat a NRRD exactly like the NIfTI of the same voxels and geometry.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.data.image_reader import ImageReader
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")


def is_dicom_folder(path: str | Path) -> bool:
    """True for a folder that holds ``.dcm`` files (one DICOM series = one image)."""
    path = Path(path)
    return path.is_dir() and any(p.suffix.lower() == ".dcm" for p in path.iterdir())


def read_sitk_image(path: str | Path):
    """Read a file with SimpleITK, or a DICOM series from a folder (the first series found)."""
    import SimpleITK as sitk

    path = Path(path)
    if path.is_dir():
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
        if not series:
            raise ValueError("no DICOM series in the folder")
        names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0])
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(names)
        return reader.Execute()
    return sitk.ReadImage(str(path))


def sitk_affine(image) -> np.ndarray:
    """Voxel (x, y, z) -> RAS world affine of a SimpleITK image (ITK's world is LPS: flip x and y)."""
    dim = image.GetDimension()
    spacing = np.array(image.GetSpacing()[:3])
    direction = np.array(image.GetDirection()).reshape(dim, dim)[:3, :3]
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing
    affine[:3, 3] = np.array(image.GetOrigin()[:3])
    affine[:2] *= -1
    return affine


def sitk_array(image) -> np.ndarray:
    """Voxels as (x, y, z[, components]): SimpleITK gives (z, y, x[, components])."""
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image)
    spatial = image.GetDimension()
    order = list(range(spatial))[::-1] + list(range(spatial, array.ndim))
    return np.ascontiguousarray(array.transpose(order))


class SimpleITKReader(ImageReader):
    """MONAI reader for NRRD, MHA/MHD and DICOM series folders through SimpleITK."""

    def verify_suffix(self, filename: Sequence[str] | str) -> bool:
        """Accept DICOM folders and the SimpleITK suffixes (NIfTI stays with NibabelReader)."""
        return all(is_dicom_folder(n) or str(n).lower().endswith(SITK_SUFFIXES) for n in ensure_tuple(filename))

    def read(self, data: Sequence[str] | str, **kwargs):
        """Read one image or a list of images (stacked as channels by ``get_data``).

        Names that :meth:`verify_suffix` rejects are refused: when the matching reader fails (nibabel on a
        truncated ``.nii.gz``), MONAI's LoadImage tries every reader, and ITK reads a truncated NIfTI as
        zeros instead of failing.
        """
        if not self.verify_suffix(data):
            raise ValueError(f"{data}: not a format read through SimpleITK here")
        images = [read_sitk_image(name) for name in ensure_tuple(data)]
        return images if len(images) > 1 else images[0]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        """Array (x, y, z[, c]) and a meta dict like NibabelReader's (affine in RAS, spatial shape)."""
        arrays, meta = [], {}
        images = img if isinstance(img, (list, tuple)) else [img]  # a sitk.Image is iterable: no ensure_tuple
        for image in images:
            array = sitk_array(image)
            spatial = min(image.GetDimension(), 3)
            affine = sitk_affine(image)
            meta = {
                MetaKeys.AFFINE: affine,
                MetaKeys.ORIGINAL_AFFINE: affine.copy(),
                MetaKeys.SPATIAL_SHAPE: np.asarray(array.shape[:spatial]),
                MetaKeys.SPACE: SpaceKeys.RAS,
                MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan") if array.ndim == spatial else -1,
            }
            arrays.append(array)
        if len(arrays) == 1:
            return arrays[0], meta
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
        return np.stack(arrays, axis=0), meta
