"""Intensity normalisation schemes: one class per ``preprocessing.intensity`` name, as nnU-Net maps its
normalisation names to classes (``nnunetv2/preprocessing/normalization``).

Each scheme gives its MONAI transforms (applied after resampling, before the pad/crop) and the sentence that
describes them in an export's ``preprocessing.json``. Adding a scheme is one class here, listed in
:data:`SCHEMES`, and its name in ``config.Intensity`` (tests/test_config.py checks that the two agree).
"""

from __future__ import annotations

from typing import ClassVar

from monai import transforms as mt

from medconvnext.data.preprocessing import PreprocessingPlan
from medconvnext.data.transforms import IMAGE


class IntensityScheme:
    """One normalisation, built for a concrete :class:`PreprocessingPlan` (which may carry its statistics)."""

    name: ClassVar[str]

    def __init__(self, pre: PreprocessingPlan) -> None:
        self.pre = pre

    def transforms(self) -> list[mt.Transform]:
        """MONAI dictionary transforms on the ``image`` key, (C, D, H, W) in, same shape out."""
        raise NotImplementedError

    def describe(self) -> str:
        """What :meth:`transforms` does, in words a deployment can reimplement (export's JSON)."""
        raise NotImplementedError


class ZScore(IntensityScheme):
    """Each channel to mean 0, standard deviation 1 over all its voxels."""

    name = "zscore"

    def transforms(self) -> list[mt.Transform]:
        return [mt.NormalizeIntensityd(IMAGE, channel_wise=True)]

    def describe(self) -> str:
        return "z-score each channel over all voxels (MONAI NormalizeIntensity, channel_wise=True)"


class NonzeroZScore(IntensityScheme):
    """Z-score over the non-zero voxels only (MRI: the zero background outside the head stays zero)."""

    name = "nonzero_zscore"

    def transforms(self) -> list[mt.Transform]:
        return [mt.NormalizeIntensityd(IMAGE, nonzero=True, channel_wise=True)]

    def describe(self) -> str:
        return "z-score each channel over its non-zero voxels (MONAI NormalizeIntensity, nonzero=True)"


class ClipZScore(IntensityScheme):
    """CT: clip to the window ``pre.clip``, then subtract the dataset mean and divide by its std."""

    name = "clip_zscore"

    def transforms(self) -> list[mt.Transform]:
        """Raises ValueError when the plan has no clip window."""
        if self.pre.clip is None:
            raise ValueError("intensity 'clip_zscore' needs preprocessing.clip = [low, high]")
        low, high = self.pre.clip
        clip = mt.ScaleIntensityRanged(IMAGE, a_min=low, a_max=high, b_min=low, b_max=high, clip=True)
        return [clip, mt.NormalizeIntensityd(IMAGE, subtrahend=self.pre.mean, divisor=self.pre.std)]

    def describe(self) -> str:
        return f"clip to {list(self.pre.clip or [])}, then (x - {self.pre.mean}) / {self.pre.std}"


class MinMax(IntensityScheme):
    """Each channel of each case linearly to [0, 1].

    For label maps / shape masks, where z-scoring would tie the foreground value to the object's size
    (1 / sqrt(foreground fraction)) and shift the background below the zero padding.
    """

    name = "minmax"

    def transforms(self) -> list[mt.Transform]:
        return [mt.ScaleIntensityd(IMAGE, minv=0.0, maxv=1.0, channel_wise=True)]

    def describe(self) -> str:
        return "rescale each channel linearly to [0, 1] (min -> 0, max -> 1; MONAI ScaleIntensity, channel_wise=True)"


class NoIntensity(IntensityScheme):
    """The voxels as read (after resampling)."""

    name = "none"

    def transforms(self) -> list[mt.Transform]:
        return []

    def describe(self) -> str:
        return "no intensity normalisation"


SCHEMES: dict[str, type[IntensityScheme]] = {
    scheme.name: scheme for scheme in (ZScore, NonzeroZScore, ClipZScore, MinMax, NoIntensity)
}
INTENSITY_MODES = tuple(SCHEMES)


def intensity_scheme(pre: PreprocessingPlan) -> IntensityScheme:
    """The scheme ``pre.intensity`` names, built for ``pre``.

    Raises:
        ValueError: an unknown name (the config rejects it earlier; a hand-made PreprocessingPlan may not).
    """
    if pre.intensity not in SCHEMES:
        raise ValueError(f"preprocessing.intensity must be one of {INTENSITY_MODES}, got {pre.intensity!r}")
    return SCHEMES[pre.intensity](pre)
