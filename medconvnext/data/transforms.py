"""MONAI dictionary transforms built from a :class:`Preprocessing`.

The deterministic part (load, channel first, orient, resample, normalise, pad/crop) is what gets
cached; the random part (augmentation) runs every epoch after the cache.
"""

from __future__ import annotations

from monai import transforms as mt

from medconvnext.data.preprocessing import Preprocessing

IMAGE = "image"
LABEL = "label"
AUGMENTATIONS = ("none", "light")
INTENSITY_MODES = ("zscore", "nonzero_zscore", "clip_zscore", "none")


def load_transforms() -> list[mt.Transform]:
    """Read the file(s) of a case as a channel-first MetaTensor carrying its affine."""
    return [mt.LoadImaged(IMAGE, image_only=True, ensure_channel_first=True), mt.EnsureTyped(IMAGE)]


def geometry_transforms(pre: Preprocessing) -> list[mt.Transform]:
    """Orient to ``pre.orientation`` and resample to ``pre.spacing`` (mm)."""
    return [
        mt.Orientationd(IMAGE, axcodes=pre.orientation, labels=None),
        mt.Spacingd(IMAGE, pixdim=pre.spacing, mode="bilinear"),
    ]


def intensity_transforms(pre: Preprocessing) -> list[mt.Transform]:
    """Normalise intensities as ``pre.intensity`` says."""
    if pre.intensity == "zscore":
        return [mt.NormalizeIntensityd(IMAGE, channel_wise=True)]
    if pre.intensity == "nonzero_zscore":
        return [mt.NormalizeIntensityd(IMAGE, nonzero=True, channel_wise=True)]
    if pre.intensity == "clip_zscore":
        if pre.clip is None:
            raise ValueError("intensity 'clip_zscore' needs preprocessing.clip = [low, high]")
        low, high = pre.clip
        clip = mt.ScaleIntensityRanged(IMAGE, a_min=low, a_max=high, b_min=low, b_max=high, clip=True)
        return [clip, mt.NormalizeIntensityd(IMAGE, subtrahend=pre.mean, divisor=pre.std)]
    if pre.intensity == "none":
        return []
    raise ValueError(f"preprocessing.intensity must be one of {INTENSITY_MODES}, got {pre.intensity!r}")


def deterministic_transforms(pre: Preprocessing, keep_meta: bool = False) -> mt.Compose:
    """Load -> orient -> resample -> normalise -> pad/crop to the input size (cacheable)."""
    steps = [
        *load_transforms(),
        *geometry_transforms(pre),
        *intensity_transforms(pre),
        mt.ResizeWithPadOrCropd(IMAGE, spatial_size=pre.input_size),
        mt.EnsureTyped(IMAGE, dtype="float32", track_meta=keep_meta),
    ]
    return mt.Compose(steps)


def augmentation_transforms(kind: str) -> list[mt.Transform]:
    """Random transforms for training."""
    if kind == "none":
        return []
    if kind == "light":
        return [mt.RandFlipd(IMAGE, prob=0.5, spatial_axis=axis) for axis in range(3)]
    raise ValueError(f"data.augment must be one of {AUGMENTATIONS}, got {kind!r}")


def training_transforms(pre: Preprocessing, augment: str) -> mt.Compose:
    """Deterministic part followed by the augmentation."""
    return mt.Compose([*deterministic_transforms(pre).transforms, *augmentation_transforms(augment)])
