"""Dataset fingerprint (spacings, sizes) -> the preprocessing plan, after nnU-Net's planner."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medconvnext.config import PreprocessingConfig
from medconvnext.data.datalist import Case
from medconvnext.data.io import read_header
from medconvnext.data.preprocessing import Preprocessing

MAX_AUTO_INPUT = 256  # above this per axis, whole-volume training stops being sensible on one GPU


@dataclass
class Fingerprint:
    """Per-case world-ordered (x, y, z) spacings and shapes of the first image of each case."""

    spacings: np.ndarray  # (N, 3)
    shapes: np.ndarray  # (N, 3)

    def to_dict(self) -> dict:
        return {
            "median_spacing": [float(v) for v in np.median(self.spacings, axis=0)],
            "median_shape": [float(v) for v in np.median(self.shapes, axis=0)],
            "min_spacing": [float(v) for v in self.spacings.min(axis=0)],
            "max_spacing": [float(v) for v in self.spacings.max(axis=0)],
            "num_cases": int(len(self.spacings)),
        }


def compute_fingerprint(cases: Sequence[Case]) -> Fingerprint:
    """Read every case's header (not its voxels)."""
    headers = [read_header(case.images[0]) for case in cases]
    return Fingerprint(
        np.array([h.world_spacing() for h in headers], dtype=float),
        np.array([h.world_shape() for h in headers], dtype=float),
    )


def plan_preprocessing(
    config: PreprocessingConfig,
    fingerprint: Fingerprint,
    min_input_size: Sequence[int],
    in_channels: int = 1,
) -> Preprocessing:
    """Fill what the config leaves open: spacing = median spacing; input size = median physical
    extent at that spacing, rounded up to a multiple of the model's minimum size."""
    spacing = config.spacing or [round(float(v), 4) for v in np.median(fingerprint.spacings, axis=0)]
    if config.input_size:
        input_size = config.input_size
    else:
        extent = np.median(fingerprint.shapes * fingerprint.spacings, axis=0)
        axes = zip(extent, spacing, min_input_size, strict=True)
        input_size = [min(MAX_AUTO_INPUT, max(m, math.ceil(e / s / m) * m)) for e, s, m in axes]
    return Preprocessing(
        orientation=config.orientation,
        spacing=tuple(float(v) for v in spacing),
        input_size=tuple(int(v) for v in input_size),
        intensity=config.intensity,
        clip=tuple(config.clip) if config.clip else None,
        in_channels=in_channels,
    )
