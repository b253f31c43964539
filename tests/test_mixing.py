"""Mixup and 3D CutMix on training batches: what is mixed, with which weight, reproducibly."""

from __future__ import annotations

import pytest
import torch

from medconvnext.engine.mixing import BatchMixer

N = 6
VALUES = torch.arange(1, N + 1, dtype=torch.float32)


def constant_batch(size: tuple[int, int, int] = (8, 10, 12)) -> tuple[torch.Tensor, torch.Tensor]:
    """Case i is the constant i + 1 in both channels and is its own class, so targets say where voxels came from."""
    images = VALUES.view(N, 1, 1, 1, 1).expand(N, 2, *size).clone()
    return images, torch.arange(N)


def assert_targets_match_the_voxels(mixed: torch.Tensor, targets: torch.Tensor) -> None:
    """The target weight of each source case equals its share of the mixed volume."""
    assert torch.allclose(targets.sum(1), torch.ones(N))
    assert torch.allclose(mixed.mean(dim=(1, 2, 3, 4)), targets @ VALUES, atol=1e-5)


def test_mixup_blends_whole_volumes_with_the_target_weight():
    images, labels = constant_batch()
    generator = torch.Generator().manual_seed(0)
    weights = []
    for _ in range(5):
        mixed, targets = BatchMixer(N, mixup_alpha=0.4)(images, labels, generator)
        assert_targets_match_the_voxels(mixed, targets)
        assert all(len(case.unique()) == 1 for case in mixed)  # a blend of two constants is a constant
        weights.append(targets.max(1).values.min())
    assert min(weights) < 0.9  # Beta(0.4, 0.4) is U-shaped, but some batch is well mixed


@pytest.mark.parametrize("seed", range(12))
def test_cutmix_pastes_one_box_and_weights_targets_by_its_volume(seed):
    images, labels = constant_batch()
    mixed, targets = BatchMixer(N, cutmix_alpha=1.0)(images, labels, torch.Generator().manual_seed(seed))
    assert_targets_match_the_voxels(mixed, targets)
    pasted = mixed != images  # (N, C, D, H, W)
    assert torch.equal(pasted[:, 0], pasted[:, 1])  # every channel of the box
    for case, own in zip(pasted[:, 0], range(N), strict=True):
        if case.any():
            idx = case.nonzero()
            box = (idx.max(0).values - idx.min(0).values + 1).prod()
            assert box == case.sum()  # the pasted voxels fill their bounding box
            assert len(mixed[own].unique()) == 2


def test_both_modes_occur_and_draws_are_reproducible():
    images, labels = constant_batch()
    mixer = BatchMixer(N, mixup_alpha=0.8, cutmix_alpha=1.0)
    generator = torch.Generator().manual_seed(0)
    kinds = set()
    for _ in range(20):
        mixed, targets = mixer(images, labels, generator)
        assert_targets_match_the_voxels(mixed, targets)
        kinds.add("cutmix" if any(len(c.unique()) == 2 for c in mixed) else "mixup")
    assert kinds == {"cutmix", "mixup"}
    first = mixer(images, labels, torch.Generator().manual_seed(5))
    again = mixer(images, labels, torch.Generator().manual_seed(5))
    other_rank = mixer(images, labels, torch.Generator().manual_seed(5), stream=1)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other_rank[1])


def test_off_or_prob_zero_leaves_the_batch_and_gives_one_hot_targets():
    images, labels = constant_batch()
    assert not BatchMixer(N).enabled and not BatchMixer(N, mixup_alpha=0.8, prob=0.0).enabled
    mixed, targets = BatchMixer(N, mixup_alpha=0.8, prob=0.0)(images, labels, torch.Generator())
    assert torch.equal(mixed, images) and torch.equal(targets, torch.eye(N))
