"""Patch training: train on random crops of the input size from full (uncropped) volumes.

The deterministic part (load, orient, resample, normalise, pad up to at least one patch: the ``padded`` variant
of :class:`~medconvnext.data.pipeline.PreprocessingPipeline`) is cached; each epoch then draws a new random
patch per volume (:func:`patch_crop`), followed by the usual augmentation:

- ``random``: the patch position is uniform;
- ``foreground``: half of the patches (``FOREGROUND_PROB``) are centred on a random foreground voxel, the rest
  are uniform (nnU-Net oversamples foreground the same way, with a third). Without a segmentation, foreground
  means "differs from the background value", the background being the median of the volume's 8 corners (air
  in CT, zero outside the head in MRI, padding): so patches land on the body, not on empty space.

Validation and predict of such a run should tile the full volume (``inference.mode: sliding | auto``).

- ``mil`` (multiple-instance learning, :mod:`medconvnext.models.mil`): each item is a *bag* of ``bag_size``
  tiles of a grid covering the volume (:class:`RandBagCropd`), a ``foreground_share`` of them holding foreground,
  each augmented on its own; the image becomes (K, C, D, H, W) and a batch (B, K, C, D, H, W). The label stays the
  volume's: the attention pooling decides which patches it rests on. Validation and predict pool every window.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai import transforms as mt

from medconvnext.data.transforms import IMAGE
from medconvnext.data.windows import window_starts

FOREGROUND_PROB = 0.5


class RandForegroundCropd(mt.Randomizable, mt.MapTransform):
    """Crop ``roi_size`` around a random foreground voxel with probability ``prob``, else at a uniform position.

    Expects a (C, D, H, W) tensor at least ``roi_size`` large (pad first); the crop is clamped inside the volume.
    """

    def __init__(self, keys: Sequence[Hashable], roi_size: Sequence[int], prob: float = FOREGROUND_PROB,
                 tolerance: float = 1e-3) -> None:
        mt.MapTransform.__init__(self, keys)
        self.roi_size = tuple(int(s) for s in roi_size)
        self.prob = prob
        self.tolerance = tolerance

    def __call__(self, data: Mapping) -> dict:
        out = dict(data)
        first = out[self.keys[0]]
        start = self.crop_start(first)
        for key in self.key_iterator(out):
            out[key] = out[key][(slice(None),) + tuple(slice(s, s + r) for s, r in zip(start, self.roi_size,
                                                                                         strict=True))]
        return out

    def crop_start(self, image: torch.Tensor, foreground: torch.Tensor | None = None) -> tuple[int, ...]:
        """The corner of the next crop (draws from this transform's random state); ``foreground``: the (M, 3)
        foreground voxel indices of ``image`` when already known (a bag draws several crops of one volume)."""
        shape = image.shape[1:]
        room = [s - r for s, r in zip(shape, self.roi_size, strict=True)]
        if min(room) < 0:
            raise ValueError(f"volume {tuple(shape)} is smaller than the patch {self.roi_size}; pad it first")
        centre = None
        if self.R.rand() < self.prob:
            if foreground is None:
                foreground = foreground_mask(image, self.tolerance).nonzero()
            if len(foreground):
                centre = foreground[self.R.randint(len(foreground))].tolist()
        if centre is None:
            return tuple(int(self.R.randint(r + 1)) for r in room)
        return tuple(min(max(c - r // 2, 0), m) for c, r, m in zip(centre, self.roi_size, room, strict=True))


class RandBagCropd(mt.Randomizable, mt.MapTransform):
    """A bag of ``bag_size`` crops of ``roi_size`` from one (C, D, H, W) volume, stacked as (K, C, D, H, W).

    The crops are tiles of a grid that covers the volume (:func:`~medconvnext.data.windows.window_starts` at no
    overlap: the windows sliding-window validation reads), drawn without replacement and not shifted (a shift
    opens gaps a small finding can fall into): a bag of K >= the number of tiles holds the whole volume, so a
    finding anywhere is in every positive bag. Uniform random crops, the first version, overlapped and left gaps,
    so many positive bags held no finding (docs/benchmarks.md, "Multiple-instance learning"). Each draw takes a
    tile holding foreground with probability ``foreground_share`` (else any tile), then goes through ``augment``
    (dictionary transforms over ``keys``) on its own.
    """

    def __init__(self, keys: Sequence[Hashable], roi_size: Sequence[int], bag_size: int,
                 foreground_share: float = FOREGROUND_PROB, augment: Sequence[mt.Transform] = (),
                 tolerance: float = 1e-3) -> None:
        mt.MapTransform.__init__(self, keys)
        self.roi_size = tuple(int(r) for r in roi_size)
        self.bag_size = int(bag_size)
        self.foreground_share = float(foreground_share)
        self.tolerance = tolerance
        self.augment = mt.Compose(list(augment))

    def set_random_state(self, seed: int | None = None, state=None) -> RandBagCropd:  # noqa: ANN001 - MONAI's
        super().set_random_state(seed, state)
        # the augmentation draws from its own stream, derived from this one (MONAI seeds each transform separately)
        self.augment.set_random_state(seed=int(self.R.randint(2**31)))
        return self

    def randomize(self, data: object = None) -> None:
        """Nothing to draw up front: each crop draws its own tile."""

    def __call__(self, data: Mapping) -> dict:
        out = dict(data)
        first = torch.as_tensor(out[self.keys[0]])
        starts = self.tile_starts(first)
        patches: dict[Hashable, list[torch.Tensor]] = {key: [] for key in self.key_iterator(out)}
        for start in starts:
            window = (slice(None),) + tuple(slice(s, s + r) for s, r in zip(start, self.roi_size, strict=True))
            patch = self.augment({key: out[key][window] for key in patches})
            for key in patches:
                patches[key].append(torch.as_tensor(patch[key]))
        for key, parts in patches.items():
            out[key] = torch.stack(parts)
        return out

    def tile_starts(self, image: torch.Tensor) -> list[tuple[int, ...]]:
        """The corners of the bag's ``bag_size`` crops of a (C, D, H, W) ``image`` (draws from this transform's
        random state). Raises ValueError when the image is smaller than a crop (pad it first)."""
        shape = tuple(image.shape[1:])
        if any(s < r for s, r in zip(shape, self.roi_size, strict=True)):
            raise ValueError(f"volume {shape} is smaller than the patch {self.roi_size}; pad it first")
        tiles = window_starts(shape, self.roi_size, overlap=0.0)
        holding = []
        if self.foreground_share > 0:
            mask = foreground_mask(image, self.tolerance)
            holding = [i for i, t in enumerate(tiles) if mask[self._window(t)].any()]
        everything, used, chosen = list(range(len(tiles))), set(), []
        for _ in range(self.bag_size):
            pool = holding if holding and self.R.rand() < self.foreground_share else everything
            # an unused tile of the pool, else any unused tile (a bag as large as the grid covers it), else reuse
            fresh = [i for i in pool if i not in used] or [i for i in everything if i not in used] or pool
            index = fresh[self.R.randint(len(fresh))]
            used.add(index)
            chosen.append(tiles[index])
        return chosen

    def _window(self, start: tuple[int, ...]) -> tuple[slice, ...]:
        return tuple(slice(s, s + r) for s, r in zip(start, self.roi_size, strict=True))


def foreground_mask(image: torch.Tensor, tolerance: float = 1e-3) -> torch.Tensor:
    """(D, H, W) mask of voxels whose first channel differs from the background (median of the 8 corners)."""
    volume = torch.as_tensor(image)[0]
    corners = volume[[0, -1]][:, [0, -1]][:, :, [0, -1]].flatten()
    background = corners.median()
    return (volume - background).abs() > tolerance


def patch_crop(input_size: Sequence[int], mode: str) -> mt.Transform:
    """The random ``input_size`` crop of patch training (``mode``: random | foreground; a MIL bag is
    :class:`RandBagCropd`); expects a volume padded to at least ``input_size`` (the pipeline's ``padded``
    variant)."""
    if mode == "foreground":
        return RandForegroundCropd(IMAGE, roi_size=input_size)
    return mt.RandSpatialCropd(IMAGE, roi_size=tuple(input_size), random_size=False)
