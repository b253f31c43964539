"""The project's MONAI ImageReaders: every image the pipeline loads goes through one of these two.

- :class:`NiftiReader`: MONAI's NibabelReader with the affine decided by
  :func:`medconvnext.data.io.nifti_affine` (the geometry rule the validator and the plan use), and without
  MONAI's ``correct_nifti_header_if_necessary``, which swaps the sform for the qform when pixdim disagrees.
- :class:`SimpleITKReader`: DICOM series folders (checked to be one regular volume,
  :mod:`medconvnext.data.dicom`), NRRD, MHA/MHD. Arrays come back in NibabelReader's axis convention,
  (x, y, z[, channels]), with a RAS affine, so Orientationd/Spacingd treat a NRRD exactly like the NIfTI of
  the same voxels and geometry.

What the libraries print while reading is captured and reported as one line naming the file
(:mod:`medconvnext.data.capture`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data.image_reader import ImageReader, NibabelReader
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from medconvnext.data.capture import library_output, report
from medconvnext.data.io import (
    NIFTI_SUFFIXES,
    SITK_SUFFIXES,
    is_dicom_folder,
    nifti_affine,
    read_sitk_image,
    sitk_affine,
    sitk_array,
)


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


class NiftiReader(NibabelReader):
    """MONAI's NibabelReader with the project's geometry rule (:func:`~medconvnext.data.io.nifti_affine`).

    ``read`` loads with nibabel and decides the affine (refusing a file whose sform and qform disagree on
    spacing or orientation); MONAI's header correction, which may replace the sform by the qform, is skipped.
    """

    def verify_suffix(self, filename: Sequence[str] | str) -> bool:
        """``.nii`` and ``.nii.gz`` (any case)."""
        return all(str(n).lower().endswith(NIFTI_SUFFIXES) for n in ensure_tuple(filename))

    def read(self, data: Sequence[str] | str, **kwargs):
        """nibabel image(s); raises GeometryError for a file whose geometry cannot be decided."""
        import nibabel as nib

        names = ensure_tuple(data)
        self.filenames = names
        images = []
        for name in names:
            image = nib.load(str(name), **{**self.kwargs, **kwargs})
            nifti_affine(image, name)  # decide (and refuse or warn) now, before any voxel is read
            images.append(image)
        return images if len(images) > 1 else images[0]

    def _get_affine(self, img) -> np.ndarray:
        return nifti_affine(img)

    def _get_array_data(self, img, filename):
        with library_output() as captured:
            data = super()._get_array_data(img, filename)
        report(str(filename), captured)
        return c_order_float32(data)


def c_order_float32(array: np.ndarray) -> np.ndarray:
    """A NIfTI array (Fortran order, x fastest) as float32 in C order, what ``LoadImage`` makes of it anyway.

    Done by torch's multi-threaded strided copy in one pass (cast and transpose together): numpy's cast then
    ``ascontiguousarray`` (MONAI's path) takes several seconds on a 512 x 512 x 300 CT. Arrays torch cannot view
    (non-native byte order, dtypes torch lacks) and arrays already in C order are returned unchanged.
    """
    if array.flags.c_contiguous or not array.flags.f_contiguous or not array.dtype.isnative \
            or array.dtype not in _TORCH_VIEWABLE:
        return array
    # array.T is the same memory in C order with the axes reversed; permuting back gives the original axes
    tensor = torch.from_numpy(array.T).permute(*reversed(range(array.ndim)))
    return tensor.to(torch.float32, memory_format=torch.contiguous_format).numpy()


_TORCH_VIEWABLE = {np.dtype(t) for t in ("uint8", "int8", "int16", "int32", "int64", "float16", "float32",
                                         "float64", "bool")}


def image_readers() -> list[ImageReader]:
    """The readers for ``monai.transforms.LoadImage``: :class:`NiftiReader` and :class:`SimpleITKReader`."""
    return [SimpleITKReader(), NiftiReader()]


def reader_for(path: str | Path) -> ImageReader:
    """The reader of one image: NIfTI through nibabel, everything else (DICOM folders, NRRD...) through ITK.

    Passed to ``LoadImage(..., reader=...)`` so that a failure is raised as is: LoadImage would otherwise
    try every registered reader and bury the first one's error in a RuntimeError.
    """
    return NiftiReader() if str(path).lower().endswith(NIFTI_SUFFIXES) else SimpleITKReader()
