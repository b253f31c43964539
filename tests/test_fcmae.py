"""FCMAE in 3D: masking emulation, loss on masked units only, patch round trip."""

from __future__ import annotations

import pytest
import torch

from medconvnext.models import create_model
from medconvnext.models.fcmae import FCMAE3d, mask_at, masked_forward_features, masked_patch_loss, patchify, random_mask


@pytest.mark.parametrize("norm", ["groupnorm", "layernorm", "batchnorm", "channelnorm"])
def test_masked_positions_stay_empty_and_do_not_leak(norm: str) -> None:
    torch.manual_seed(0)
    encoder = create_model("convnext_atto", norm=norm, grn=True, dims=(8, 16, 32, 64), depths=(1, 1, 1, 1))
    encoder.train()
    x = torch.rand(2, 1, 64, 64, 64)
    mask = random_mask(2, (8, 8, 8), 0.6, torch.Generator().manual_seed(1))
    visible = 1 - mask
    with torch.no_grad():
        features = masked_forward_features(encoder, x, visible)
        # a cell whose units are all masked holds exactly zero at every stage
        for f in features:
            m = mask_at(visible, tuple(f.shape[2:]))
            assert (m == 0).any() or f.shape[-1] <= 2
            assert torch.count_nonzero(f * (1 - m)) == 0
        # changing the masked voxels changes nothing the encoder computes
        noise = torch.rand_like(x) * mask_at(mask, (64, 64, 64))
        again = masked_forward_features(encoder, x + 10 * noise, visible)
    for a, b in zip(features, again, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("pre_norm", "stride"), [("none", 1), ("batchnorm", 1), ("none", 2)])
def test_pre_stem_is_masked_like_a_sparse_conv(pre_norm: str, stride: int) -> None:
    # the 3³ pre-stem conv reads masked voxels' zeros at a unit's border and spills into masked units; the
    # re-mask after it keeps the masked content out of every feature, with its norm or without
    torch.manual_seed(0)
    encoder = create_model("convnext_med_iso", stem_conv_channels=8, stem_conv_norm=pre_norm,
                           stem_conv_stride=stride, stem_conv_init="kaiming", dims=(16,), depths=(2,)).train()
    x = _assert_masked_like_a_sparse_conv(encoder)
    model = FCMAE3d(encoder, mask_unit=8, loss="bce")
    out = model((x > 0.8).float(), generator=torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert model.encoder.pre_stem[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"multiple of the stem stride \(8, 8, 8\)"):
        FCMAE3d(create_model("convnext_med_iso", stem_conv_channels=8, stem_conv_stride=2), mask_unit=4)


@pytest.mark.parametrize("norm", ["groupnorm", "batchnorm", "channelnorm"])
def test_masked_forward_gives_the_same_features_in_channels_last(norm: str) -> None:
    # pretrain runs the encoder in the layout of the models' table (channels_last_3d for ConvNeXt on CPU at 64³):
    # the masked norms' reshapes must not depend on the strides
    torch.manual_seed(0)
    encoder = create_model("convnext_atto", norm=norm, dims=(8, 16, 32, 64), depths=(1, 1, 1, 1)).train()
    x = torch.rand(2, 1, 64, 64, 64)
    visible = 1 - random_mask(2, (8, 8, 8), 0.6, torch.Generator().manual_seed(1))
    with torch.no_grad():
        dense = masked_forward_features(encoder, x, visible)
        encoder.to(memory_format=torch.channels_last_3d)
        last = masked_forward_features(encoder, x.contiguous(memory_format=torch.channels_last_3d), visible)
    assert last[0].is_contiguous(memory_format=torch.channels_last_3d)
    for a, b in zip(dense, last, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_random_mask_masks_the_ratio_of_units() -> None:
    mask = random_mask(3, (4, 4, 4), 0.6, torch.Generator().manual_seed(0))
    assert mask.shape == (3, 1, 4, 4, 4)
    assert mask.flatten(1).sum(1).tolist() == [38.0, 38.0, 38.0]
    assert not torch.equal(mask[0], mask[1])


def test_loss_ignores_visible_units() -> None:
    torch.manual_seed(0)
    pred, target = torch.randn(2, 8, 5), torch.randn(2, 8, 5)
    mask = torch.tensor([[1, 0, 1, 0, 0, 0, 0, 1], [0, 0, 0, 1, 1, 0, 0, 0]], dtype=torch.float32)
    changed = pred + 100 * (1 - mask).unsqueeze(-1)
    assert masked_patch_loss(changed, target, mask) == masked_patch_loss(pred, target, mask)
    by_hand = sum(((pred[n, i] - target[n, i]) ** 2).mean() for n in range(2) for i in range(8) if mask[n, i]) / 5
    torch.testing.assert_close(masked_patch_loss(pred, target, mask), by_hand)


def test_bce_loss_ignores_visible_units_and_refuses_targets_outside_0_1() -> None:
    torch.manual_seed(0)
    pred, target = torch.randn(2, 8, 5), (torch.rand(2, 8, 5) > 0.7).float()
    mask = torch.tensor([[1, 0, 1, 0, 0, 0, 0, 1], [0, 0, 0, 1, 1, 0, 0, 0]], dtype=torch.float32)
    changed = pred + 100 * (1 - mask).unsqueeze(-1)
    loss = masked_patch_loss(pred, target, mask, "bce")
    assert masked_patch_loss(changed, target, mask, "bce") == loss
    p = torch.sigmoid(pred)
    per_voxel = -(target * p.log() + (1 - target) * (1 - p).log())
    by_hand = sum(per_voxel[n, i].mean() for n in range(2) for i in range(8) if mask[n, i]) / 5
    torch.testing.assert_close(loss, by_hand)
    with pytest.raises(ValueError, match=r"inputs in \[0, 1\]"):
        masked_patch_loss(pred, target * 2 - 0.5, mask, "bce")


def test_bce_reconstruction_is_a_probability_and_excludes_norm_target() -> None:
    model = FCMAE3d(create_model("convnext_atto", dims=(8, 16, 32, 64), depths=(1, 1, 1, 1)), mask_unit=8, loss="bce")
    x = (torch.rand(2, 1, 32, 32, 32) > 0.9).float()
    out = model(x, generator=torch.Generator().manual_seed(0))
    volume = model.reconstruct(out["pred"], (32, 32, 32))
    assert volume.min() >= 0 and volume.max() <= 1 and torch.isfinite(out["loss"])
    with pytest.raises(ValueError, match="norm_target"):
        FCMAE3d(create_model("convnext_atto"), loss="bce", norm_target=True)
    with pytest.raises(ValueError, match="'mse' or 'bce'"):
        FCMAE3d(create_model("convnext_atto"), loss="l1")  # type: ignore[arg-type]



def test_patchify_round_trip_and_shapes() -> None:
    model = FCMAE3d(create_model("convnext_atto", dims=(8, 16, 32, 64), depths=(1, 1, 1, 1)), mask_unit=8)
    x = torch.randn(2, 1, 32, 32, 32)
    torch.testing.assert_close(model.reconstruct(patchify(x, (8, 8, 8)), (32, 32, 32)), x)
    out = model(x, generator=torch.Generator().manual_seed(0))
    assert out["pred"].shape == out["target"].shape == (2, 64, 512) and out["mask"].shape == (2, 1, 4, 4, 4)
    out["loss"].backward()
    assert model.encoder.stem[0].weight.grad is not None and model.mask_token.grad is not None
    with pytest.raises(ValueError, match="multiple of the stem stride"):
        FCMAE3d(create_model("convnext_atto"), mask_unit=6)
    with pytest.raises(ValueError, match="not a multiple of mask_unit"):
        model(torch.randn(1, 1, 36, 32, 32))


def test_mixer_blocks_and_stem_gelu_are_masked_like_a_sparse_conv() -> None:
    # the Vessel-diagnosis options (ConvMixer's layer, GELU in the stem) keep FCMAE's masking exact
    torch.manual_seed(0)
    encoder = create_model("convnext_med_iso", block="mixer", stem_act=True, dims=(16,), depths=(2,)).train()
    _assert_masked_like_a_sparse_conv(encoder)


def _assert_masked_like_a_sparse_conv(encoder) -> torch.Tensor:
    """Masked cells stay zero, visible ones do not, and changing masked voxels moves no feature; returns the
    (2, 1, 32, 32, 32) input it used."""
    x = torch.rand(2, 1, 32, 32, 32)
    mask = random_mask(2, (4, 4, 4), 0.6, torch.Generator().manual_seed(1))
    visible = 1 - mask
    with torch.no_grad():
        features = masked_forward_features(encoder, x, visible)
        again = masked_forward_features(encoder, x + 10 * torch.rand_like(x) * mask_at(mask, (32, 32, 32)), visible)
    m = mask_at(visible, tuple(features[-1].shape[2:]))
    assert torch.count_nonzero(features[-1] * (1 - m)) == 0 and torch.count_nonzero(features[-1] * m) > 0
    torch.testing.assert_close(features[-1], again[-1], atol=1e-5, rtol=1e-5)
    return x
