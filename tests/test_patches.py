"""Patch crops: uniform and foreground-weighted, real MONAI pipelines on small volumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medconvnext.data.patches import RandForegroundCropd, foreground_mask


def _volume_with_blob() -> torch.Tensor:
    volume = torch.zeros(1, 40, 40, 40)
    volume[0, 30:36, 4:10, 30:36] = 1.0  # a small bright blob near one corner; everything else background
    return volume


def test_foreground_mask_uses_the_corner_background():
    volume = _volume_with_blob() - 3.0  # background is -3 after z-scoring, not zero
    mask = foreground_mask(volume)
    assert mask.sum() == 6 * 6 * 6 and mask[30:36, 4:10, 30:36].all()


def test_foreground_crops_contain_the_blob_far_more_often_than_uniform_ones():
    volume = _volume_with_blob()
    roi = (12, 12, 12)

    def hit_rate(prob: float) -> float:
        crop = RandForegroundCropd(["image"], roi, prob=prob)
        crop.set_random_state(seed=0)
        hits = 0
        for _ in range(200):
            patch = crop({"image": volume})["image"]
            assert patch.shape == (1, *roi)
            hits += bool(patch.sum() > 0)
        return hits / 200

    uniform, weighted, always = hit_rate(0.0), hit_rate(0.5), hit_rate(1.0)
    assert always == 1.0  # a crop centred on a foreground voxel always contains it
    assert uniform < 0.25 and weighted > uniform + 0.3


def test_foreground_crop_is_reproducible_and_rejects_small_volumes():
    volume = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 20, 20, 20)).astype(np.float32))
    a, b = RandForegroundCropd(["image"], (8, 8, 8)), RandForegroundCropd(["image"], (8, 8, 8))
    a.set_random_state(seed=3)
    b.set_random_state(seed=3)
    assert all(torch.equal(a({"image": volume})["image"], b({"image": volume})["image"]) for _ in range(5))
    with pytest.raises(ValueError, match="smaller than the patch"):
        a({"image": torch.zeros(1, 6, 20, 20)})
