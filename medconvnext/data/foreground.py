"""The foreground of a scan: the body of a CT, the non-zero voxels of an MRI; its box and its voxels.

Planning crops every scan to its foreground before choosing the spacing (nnU-Net crops to non-zero the same way),
so that the model's input covers the anatomy and not the air or padding around it:

- ``body`` (CT): voxels above ``BODY_HU`` (-500 HU: soft tissue and bone, not air or lung), the largest
  connected component (the patient, not the table or a loose cable), holes filled slice by slice (the lungs and
  airways inside the body belong to it). Connected components are labelled on a grid subsampled by up to
  ``BOX_STRIDE`` per axis, so a 512 x 512 x 300 scan costs about a second, not a minute; an axis of fewer than
  ``BOX_STRIDE_FROM`` voxels is not subsampled (a small or coarse scan: at 4 mm a stride of 4 samples every
  16 mm, which cut the body's rim beside the lungs into pieces, and the "largest component" was the mediastinum
  alone: a peripheral nodule fell outside the crop).
- ``nonzero`` (MRI, generic): voxels that differ from zero in any channel (skull-stripped or masked MRI, padding).
- ``none``: the whole scan.

The box is what :class:`CropToForegroundd` (MONAI's ``CropForegroundd``) crops to (its inverse puts maps back on
the scan); the body mask is where CT intensity statistics are sampled (not the air around the patient).
"""

from __future__ import annotations

import numpy as np
import torch
from monai import transforms as mt
from scipy import ndimage

from medconvnext.choices import Crop, choices

CROPS = tuple(c for c in choices(Crop) if c != "auto")  # what preprocessing.crop auto resolves to
BODY_HU = -500.0
BOX_STRIDE = 4
BOX_STRIDE_FROM = 128  # voxels per stride step wanted along an axis before it is subsampled (box_strides)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def box_strides(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Subsampling per axis for the body box: ``BOX_STRIDE`` on axes of at least ``BOX_STRIDE * BOX_STRIDE_FROM``
    voxels, less on shorter ones, 1 below ``2 * BOX_STRIDE_FROM`` (small or coarse scans are labelled in full)."""
    return tuple(max(1, min(BOX_STRIDE, int(s) // BOX_STRIDE_FROM)) for s in shape[-3:])  # type: ignore[return-value]


def body_mask(volume: np.ndarray, threshold: float = BODY_HU, stride: int | tuple[int, int, int] = 1) -> np.ndarray:
    """Body mask of a CT volume (X, Y, Z) in HU, on the grid subsampled by ``stride`` (one per axis, or the same
    on all; bool, same axes).

    Largest connected component of ``volume > threshold``, holes filled in each slice of the last axis (axial
    in RAS). Returns an all-False mask when no voxel passes the threshold.
    """
    sx, sy, sz = (stride,) * 3 if isinstance(stride, int) else stride
    small = np.asarray(volume[::sx, ::sy, ::sz]) > threshold
    if not small.any():
        return small
    body = _largest_component(small)
    for z in range(body.shape[2]):
        body[:, :, z] = ndimage.binary_fill_holes(body[:, :, z])
    return body


def foreground_box(volume: np.ndarray, mode: str) -> tuple[tuple[int, int], ...]:
    """The [start, end) voxel range per axis of the foreground of a (C, X, Y, Z) or (X, Y, Z) array.

    ``mode``: ``body`` (channel 0 in HU), ``nonzero`` (any channel), ``none`` (the whole array). A volume with
    no foreground keeps its whole extent (nothing to crop to is not a reason to crop everything).

    Raises:
        ValueError: an unknown mode.
    """
    if mode not in CROPS:
        raise ValueError(f"crop must be one of {', '.join(CROPS)}, got {mode!r}")
    data = np.asarray(volume)
    spatial = data if data.ndim == 3 else data[0]
    shape = spatial.shape
    whole = tuple((0, int(s)) for s in shape)
    if mode == "none":
        return whole
    if mode == "body":
        strides = box_strides(shape)
        mask = body_mask(spatial, stride=strides)
    else:
        mask, strides = (data != 0) if data.ndim == 3 else (data != 0).any(0), (1, 1, 1)
    if not mask.any():
        return whole
    box = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hits, stride = np.flatnonzero(mask.any(axis=others)), strides[axis]
        # a subsampled hit at i stands for voxels [i*stride - (stride-1), (i+1)*stride): never cut a voxel
        start = max(0, int(hits[0]) * stride - (stride - 1))
        end = min(int(shape[axis]), (int(hits[-1]) + 1) * stride)
        box.append((start, end))
    return tuple(box)


class CropToForegroundd(mt.CropForegroundd):
    """Crop ``keys`` to :func:`foreground_box` of the source image, invertibly (MONAI records the crop, so
    ``Invertd`` puts maps back on the scan).

    MONAI's ``CropForegroundd`` computes the box of a ``select_fn`` mask over every voxel (about a second on a
    512 x 512 x 300 CT); here the box comes straight from the subsampled body mask, and MONAI's crop and inverse are
    reused unchanged. Image (C, X, Y, Z), box in voxels.

    Raises:
        ValueError: an unknown mode.
    """

    def __init__(self, keys: str, mode: str) -> None:
        if mode not in CROPS:
            raise ValueError(f"crop must be one of {', '.join(CROPS)}, got {mode!r}")
        super().__init__(keys, source_key=keys, allow_smaller=True, start_coord_key=None, end_coord_key=None)
        self.cropper = _BoxCropper(mode, allow_smaller=True)


class _BoxCropper(mt.CropForeground):
    """MONAI's foreground cropper with the box from :func:`foreground_box` (a class, not a closure, so that loader
    and cache worker processes can pickle it)."""

    def __init__(self, mode: str, allow_smaller: bool) -> None:
        super().__init__(allow_smaller=allow_smaller)
        self.mode = mode

    def compute_bounding_box(self, img: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        array = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        box = foreground_box(array, self.mode)
        return np.array([a for a, _ in box]), np.array([b for _, b in box])
