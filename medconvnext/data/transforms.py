"""The MONAI building blocks of the pipeline: loading a case, orienting and resampling it, augmenting it.

:class:`~medconvnext.data.pipeline.PreprocessingPipeline` assembles them (with the intensity scheme of
:mod:`medconvnext.data.intensity`) into the chains that run; the trainer's on-device augmentation uses
:func:`augmentation_transforms` directly.
"""

from __future__ import annotations

import torch
from monai import transforms as mt
from monai.data import MetaTensor

from medconvnext.choices import Augment, choices
from medconvnext.data.capture import library_output, report
from medconvnext.data.foreground import CropToForegroundd
from medconvnext.data.preprocessing import PreprocessingPlan
from medconvnext.data.readers import image_readers, reader_for

IMAGE = "image"
LABEL = "label"


class LoadCaseImaged(mt.MapTransform):
    """Load one image, or several (a list of paths) resampled to the first one's grid and stacked as channels.

    NIfTI goes through nibabel, everything else (DICOM folders, NRRD, MHA/MHD) through SimpleITK; both give
    (x, y, z) arrays with a RAS affine, so the rest of the pipeline cannot tell the formats apart. The affine is
    the one :mod:`medconvnext.data.io` decides (the validator's and the plan's). What MONAI or the readers warn
    about while loading is reported as one line naming the file.
    """

    def __init__(self, key: str = IMAGE) -> None:
        super().__init__(key)
        self.loader = mt.LoadImage(reader=image_readers(), image_only=True, ensure_channel_first=True)
        self.resample = mt.ResampleToMatch(mode="bilinear", padding_mode="zeros")

    def load(self, path: str):
        """One image as a channel-first MetaTensor; the reader is chosen here so that its error surfaces as is."""
        with library_output() as captured:
            image = self.loader(path, reader=reader_for(path))
        report(str(path), captured)
        return image

    def __call__(self, data: dict) -> dict:
        out = dict(data)
        for key in self.key_iterator(out):
            paths = out[key] if isinstance(out[key], (list, tuple)) else [out[key]]
            images = [self.load(path) for path in paths]
            reference = images[0]
            others = [self.resample(image, img_dst=reference) for image in images[1:]]
            stacked = torch.cat([reference.as_tensor(), *[o.as_tensor() for o in others]]) if others else None
            out[key] = reference if stacked is None else MetaTensor(stacked, meta=reference.meta)
        return out


def load_transforms() -> list[mt.Transform]:
    """Read the file(s) of a case as a channel-first MetaTensor carrying its affine."""
    return [LoadCaseImaged(IMAGE), mt.EnsureTyped(IMAGE)]


def geometry_transforms(pre: PreprocessingPlan) -> list[mt.Transform]:
    """Orient to ``pre.orientation``, crop to the foreground (``pre.crop``; before resampling, so the resampling
    reads only the foreground box) and resample to ``pre.spacing`` (mm)."""
    crop = []
    if pre.crop != "none":
        crop = [CropToForegroundd(IMAGE, pre.crop)]
    return [
        mt.Orientationd(IMAGE, axcodes=pre.orientation, labels=None),
        *crop,
        mt.Spacingd(IMAGE, pixdim=pre.spacing, mode="bilinear"),
    ]


def augmentation_transforms(kind: str, input_size: tuple[int, int, int]) -> list[mt.Transform]:
    """Random transforms for training; every preset keeps the input shape.

    - ``flips``: random flips on every axis only (keeps the anatomy's orientation up to mirroring);
    - ``light``: flips on every axis and 90° rotations in every plane whose two sides are equal;
    - ``medium``: light + small affine (±10°, ±10 % scale) + intensity scale/shift;
    - ``heavy``: medium with a larger affine (±20°, ±15 %, small shifts) + gamma, Gaussian noise, bias field.
    """
    if kind == "none":
        return []
    if kind not in choices(Augment):
        raise ValueError(f"data.augment must be one of {choices(Augment)}, got {kind!r}")
    flips = [mt.RandFlipd(IMAGE, prob=0.5, spatial_axis=axis) for axis in range(3)]
    if kind == "flips":
        return flips
    planes = [(a, b) for a, b in ((0, 1), (0, 2), (1, 2)) if input_size[a] == input_size[b]]
    steps: list[mt.Transform] = flips + [mt.RandRotate90d(IMAGE, prob=0.5, spatial_axes=plane) for plane in planes]
    if kind == "light":
        return steps
    heavy = kind == "heavy"
    angle = 0.35 if heavy else 0.17  # radians: about 20° / 10°
    steps += [
        mt.RandAffined(IMAGE, prob=0.5 if heavy else 0.3, rotate_range=(angle,) * 3,
                       scale_range=(0.15 if heavy else 0.1,) * 3,
                       translate_range=tuple(int(0.05 * s) for s in input_size) if heavy else None,
                       mode="bilinear", padding_mode="zeros"),
        mt.RandScaleIntensityd(IMAGE, factors=0.1, prob=0.5),
        mt.RandShiftIntensityd(IMAGE, offsets=0.1, prob=0.5),
    ]
    if heavy:
        steps += [
            mt.RandAdjustContrastd(IMAGE, gamma=(0.7, 1.5), prob=0.3),
            mt.RandGaussianNoised(IMAGE, std=0.05, prob=0.3),
            mt.RandBiasFieldd(IMAGE, coeff_range=(0.0, 0.1), prob=0.3),
        ]
    return steps
