"""Where the windows of a volume lie: the regular grid that sliding-window inference reads
(:mod:`medconvnext.engine.sliding_window`) and that a MIL bag draws its tiles from
(:class:`medconvnext.data.patches.RandBagCropd`): one grid, so a bag as large as the grid holds exactly the windows
validation pools.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

__all__ = ["Triple", "as_overlap", "as_triple", "window_starts"]

Triple = tuple[int, int, int]


def as_triple(value: int | Sequence[int], name: str) -> Triple:
    """An int or three ints, each a positive int, as a 3-tuple."""
    values = [value] * 3 if isinstance(value, int) else list(value)
    if len(values) != 3 or any(isinstance(v, bool) or not isinstance(v, int | np.integer) for v in values):
        raise ValueError(f"{name} must be an int or three ints (D, H, W), got {value!r}")
    if any(v <= 0 for v in values):
        raise ValueError(f"{name} must be positive on every axis, got {value!r}")
    return tuple(int(v) for v in values)  # type: ignore[return-value]


def as_overlap(overlap: float | Sequence[float]) -> tuple[float, float, float]:
    """A fraction in [0, 1), or one per axis, as a 3-tuple."""
    values = [overlap] * 3 if isinstance(overlap, int | float) else list(overlap)
    if len(values) != 3:
        raise ValueError(f"overlap must be a number or three numbers (D, H, W), got {overlap!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= v < 1.0:
            raise ValueError(f"overlap must be in [0, 1) (a fraction of the window), got {overlap!r}")
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def _axis_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Evenly spread starts of windows of ``roi`` voxels covering ``size`` voxels (size >= roi)."""
    if size == roi:
        return [0]
    # the window count MONAI's dense_patch_slices would use for this interval ...
    interval = max(int(roi * (1.0 - overlap)), 1)
    n = 1 + -(-(size - roi) // interval)  # ceil division
    # ... spread evenly from 0 to size - roi: the step (size - roi) / (n - 1) is <= interval,
    # so the overlap is at least the requested one. Round half up in exact integer arithmetic
    # so the result never depends on floating-point noise.
    span = size - roi
    return [(2 * i * span + (n - 1)) // (2 * (n - 1)) for i in range(n)]


def window_starts(
    volume_size: Sequence[int], roi_size: int | Sequence[int], overlap: float | Sequence[float] = 0.25
) -> list[Triple]:
    """Start (d, h, w) of every window of ``roi_size`` that tiles a volume of ``volume_size``.

    Args:
        volume_size: (D, H, W) of the (already padded) volume; must be >= ``roi_size`` on every
            axis (see :func:`symmetric_padding` for the padding :func:`sliding_window_classify` adds).
        roi_size: window size, an int or (D, H, W).
        overlap: fraction of a window shared with its neighbour, in [0, 1); one number or one per axis.

    Returns:
        Starts in C order (d slowest, w fastest). Per axis, the number of windows is the one MONAI's
        ``dense_patch_slices`` uses for the interval ``int(roi * (1 - overlap))``; the first start is
        0, the last is ``size - roi`` (flush with the end) and the ones between are evenly spaced
        (rounded to the nearest voxel), so neighbours overlap by at least ``overlap``.
    """
    size = as_triple(tuple(volume_size), "volume_size")
    roi = as_triple(roi_size, "roi_size")
    ov = as_overlap(overlap)
    if any(s < r for s, r in zip(size, roi, strict=True)):
        raise ValueError(f"volume_size {size} is smaller than roi_size {roi} on some axis; pad the volume first")
    per_axis = [_axis_starts(s, r, o) for s, r, o in zip(size, roi, ov, strict=True)]
    return list(itertools.product(*per_axis))
