"""Patch training: train on random crops of the input size from full (uncropped) volumes.

The deterministic part (load, orient, resample, normalise, pad up to at least one patch) is cached;
each epoch then draws a new uniformly random patch per volume, followed by the usual augmentation.
Validation and predict of such a run should tile the full volume (``inference.mode: sliding | auto``).
"""

from __future__ import annotations

from monai import transforms as mt

from medconvnext.data.preprocessing import Preprocessing
from medconvnext.data.transforms import (
    IMAGE,
    augmentation_transforms,
    geometry_transforms,
    intensity_transforms,
    load_transforms,
)

PATCH_MODES = ("none", "random")


def patch_training_transforms(pre: Preprocessing, augment: str) -> mt.Compose:
    """Full-volume preprocessing, then a random ``pre.input_size`` crop, then the augmentation."""
    return mt.Compose([
        *load_transforms(),
        *geometry_transforms(pre),
        *intensity_transforms(pre),
        mt.SpatialPadd(IMAGE, spatial_size=pre.input_size),  # a volume smaller than a patch on some axis
        mt.EnsureTyped(IMAGE, dtype="float32", track_meta=False),
        mt.RandSpatialCropd(IMAGE, roi_size=pre.input_size, random_size=False),
        *augmentation_transforms(augment, pre.input_size),
    ])
