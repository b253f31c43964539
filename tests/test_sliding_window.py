"""Sliding-window classification: tiling, aggregation, batch-size independence, map affine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medconvnext.engine.sliding_window import (
    WindowResult,
    sliding_window_classify,
    symmetric_padding,
    window_map_affine,
    window_starts,
)


class TinyClassifier(nn.Module):
    """Conv3d -> global average pool -> Linear: small, real, and sensitive to where its input comes from."""

    def __init__(self, in_channels: int = 2, num_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, 4, kernel_size=3, padding=1)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3, 4)))


@pytest.fixture
def model() -> TinyClassifier:
    torch.manual_seed(0)
    return TinyClassifier().eval()


def _volume(shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- window_starts


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize(
    "size, roi",
    [
        ((5, 7, 3), (8, 8, 8)),  # smaller than roi on every axis
        ((8, 3, 12), (8, 8, 8)),  # equal / smaller / larger
        ((8, 8, 8), (8, 8, 8)),  # exactly roi
        ((17, 23, 9), (8, 6, 4)),  # non-divisible
        ((64, 40, 33), (16, 16, 16)),
        ((10, 10, 10), (1, 1, 1)),
    ],
)
def test_windows_cover_every_voxel_and_stay_in_bounds(size, roi, overlap):
    pad = symmetric_padding(size, roi)
    padded = tuple(s + before + after for s, (before, after) in zip(size, pad, strict=True))
    assert all(p >= r for p, r in zip(padded, roi, strict=True))
    starts = window_starts(padded, roi, overlap)
    hits = np.zeros(padded, dtype=np.int64)
    for d, h, w in starts:
        for s, r, p in zip((d, h, w), roi, padded, strict=True):
            assert 0 <= s <= p - r
        hits[d : d + roi[0], h : h + roi[1], w : w + roi[2]] += 1
    assert hits.min() >= 1
    assert len(set(starts)) == len(starts)
    for axis in range(3):
        axis_starts = sorted({s[axis] for s in starts})
        assert axis_starts[0] == 0 and axis_starts[-1] == padded[axis] - roi[axis]  # last window flush with the end
        if len(axis_starts) > 1:
            steps = np.diff(axis_starts)
            # evenly spread: steps differ by at most one voxel, and never exceed MONAI's interval
            assert steps.max() - steps.min() <= 1
            assert steps.max() <= max(int(roi[axis] * (1 - overlap)), 1)


def test_window_count_matches_monai_dense_patch_slices():
    from monai.data.utils import dense_patch_slices

    for size, roi, overlap in [((128, 128, 128), (64, 64, 64), 0.25), ((50, 37, 21), (16, 8, 5), 0.5)]:
        interval = [max(int(r * (1 - overlap)), 1) for r in roi]
        assert len(window_starts(size, roi, overlap)) == len(dense_patch_slices(size, roi, interval))


def test_symmetric_padding_centres_the_volume():
    assert symmetric_padding((5, 8, 20), (8, 8, 8)) == ((1, 2), (0, 0), (0, 0))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"volume_size": (8, 8, 8), "roi_size": (8, 0, 8)}, "positive"),
        ({"volume_size": (8, 8, 8), "roi_size": (8, 8)}, "three ints"),
        ({"volume_size": (8, 8, 8), "roi_size": 4, "overlap": 1.0}, r"\[0, 1\)"),
        ({"volume_size": (8, 8, 8), "roi_size": 4, "overlap": -0.1}, r"\[0, 1\)"),
        ({"volume_size": (4, 8, 8), "roi_size": 8}, "pad the volume"),
    ],
)
def test_window_starts_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        window_starts(**kwargs)


# ---------------------------------------------------------------- sliding_window_classify


def _by_hand(volume: torch.Tensor, model: nn.Module, roi, overlap) -> tuple[torch.Tensor, list]:
    """Each window's logits from explicit slicing of the (unpadded, large enough) volume."""
    starts = window_starts(volume.shape[1:], roi, overlap)
    with torch.no_grad():
        logits = torch.cat(
            [model(volume[None, :, d : d + roi[0], h : h + roi[1], w : w + roi[2]]) for d, h, w in starts]
        )
    return logits, starts


def test_aggregation_equals_hand_computed_combination(model):
    volume = _volume((2, 13, 11, 9))
    roi, overlap = (6, 5, 4), 0.25
    logits, starts = _by_hand(volume, model, roi, overlap)
    probs = torch.softmax(logits, dim=-1)
    expected = {
        "mean": probs.mean(dim=0),
        "max": probs.max(dim=0).values / probs.max(dim=0).values.sum(),
        "logit_mean": torch.softmax(logits.mean(dim=0), dim=-1),
    }
    for aggregation, want in expected.items():
        result = sliding_window_classify(volume, model, roi, overlap=overlap, sw_batch_size=3, aggregation=aggregation)
        assert isinstance(result, WindowResult)
        assert result.starts == starts
        torch.testing.assert_close(result.probabilities, want, atol=1e-6, rtol=0)
        assert result.probabilities.shape == (3,)
        assert result.probabilities.sum().item() == pytest.approx(1.0, abs=1e-6)
        n = result.grid_shape
        assert n[0] * n[1] * n[2] == len(starts)
        torch.testing.assert_close(result.window_probabilities.reshape(-1, 3), probs, atol=1e-6, rtol=0)
        torch.testing.assert_close(result.window_logits.reshape(-1, 3), logits, atol=1e-6, rtol=0)
        assert result.pad == ((0, 0), (0, 0), (0, 0))


def test_window_map_is_in_c_order_of_the_grid(model):
    volume = _volume((2, 12, 10, 8))
    result = sliding_window_classify(volume, model, (6, 6, 6), overlap=0.5)
    per_axis = [sorted({s[a] for s in result.starts}) for a in range(3)]
    i, j, k = 1, 2, 0
    d, h, w = per_axis[0][i], per_axis[1][j], per_axis[2][k]
    with torch.no_grad():
        want = torch.softmax(model(volume[None, :, d : d + 6, h : h + 6, w : w + 6])[0], dim=-1)
    torch.testing.assert_close(result.window_probabilities[i, j, k], want, atol=1e-6, rtol=0)


def test_result_independent_of_sw_batch_size(model):
    volume = _volume((2, 14, 12, 10))
    results = [sliding_window_classify(volume, model, (6, 6, 6), sw_batch_size=b) for b in (1, 3, 16)]
    for other in results[1:]:
        torch.testing.assert_close(other.window_logits, results[0].window_logits, atol=1e-6, rtol=0)
        torch.testing.assert_close(other.probabilities, results[0].probabilities, atol=1e-6, rtol=0)


class RecordingClassifier(TinyClassifier):
    """The tiny classifier, remembering the shape of every batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.batch_shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_shapes.append(tuple(x.shape))
        return super().forward(x)


def test_model_sees_at_most_sw_batch_size_windows_of_roi_size():
    model = RecordingClassifier().eval()
    result = sliding_window_classify(_volume((2, 20, 12, 10)), model, (6, 6, 6), overlap=0.5, sw_batch_size=4)
    n_windows = len(result.starts)
    assert [shape[0] for shape in model.batch_shapes] == [4] * (n_windows // 4) + (
        [n_windows % 4] if n_windows % 4 else []
    )
    assert {shape[1:] for shape in model.batch_shapes} == {(2, 6, 6, 6)}


def test_volume_equal_to_roi_is_the_whole_volume_prediction(model):
    volume = _volume((1, 2, 8, 7, 6))  # a batch of one is accepted too
    with torch.no_grad():
        logits = model(volume)[0]
    for aggregation in ("mean", "max", "logit_mean"):
        result = sliding_window_classify(volume, model, (8, 7, 6), aggregation=aggregation)
        assert result.grid_shape == (1, 1, 1)
        torch.testing.assert_close(result.probabilities, torch.softmax(logits, dim=-1), atol=1e-6, rtol=0)


def test_small_volume_is_padded_symmetrically_with_zeros(model):
    volume = _volume((2, 5, 8, 3))
    result = sliding_window_classify(volume, model, (8, 8, 8))
    assert result.pad == ((1, 2), (0, 0), (2, 3))
    padded = torch.zeros(1, 2, 8, 8, 8)
    padded[:, :, 1:6, :, 2:5] = volume
    with torch.no_grad():
        want = torch.softmax(model(padded)[0], dim=-1)
    torch.testing.assert_close(result.probabilities, want, atol=1e-6, rtol=0)
    # other pad modes run and differ from zero padding
    replicate = sliding_window_classify(volume, model, (8, 8, 8), pad_mode="replicate")
    assert not torch.allclose(replicate.probabilities, result.probabilities)


def test_meta_tensor_volume_gives_plain_results(model):
    from monai.data import MetaTensor

    volume = _volume((2, 10, 9, 8))
    plain = sliding_window_classify(volume, model, (6, 6, 6))
    meta = sliding_window_classify(MetaTensor(volume, affine=torch.eye(4)), model, (6, 6, 6))
    assert type(meta.probabilities) is torch.Tensor
    torch.testing.assert_close(meta.window_logits, plain.window_logits, atol=0, rtol=0)


def test_reflect_padding_larger_than_the_volume_is_a_clear_error(model):
    with pytest.raises(ValueError, match="reflect"):
        sliding_window_classify(_volume((2, 2, 8, 8)), model, (8, 8, 8), pad_mode="reflect")
    result = sliding_window_classify(_volume((2, 6, 8, 8)), model, (8, 8, 8), pad_mode="reflect")
    assert result.pad == ((1, 1), (0, 0), (0, 0))


def test_results_live_on_the_volume_device_and_do_not_track_gradients(model):
    volume = _volume((2, 8, 8, 8)).requires_grad_(True)
    result = sliding_window_classify(volume, model, 8)
    assert result.probabilities.device == volume.device
    assert not result.probabilities.requires_grad


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"aggregation": "median"}, "aggregation"),
        ({"pad_mode": "wrap"}, "pad_mode"),
        ({"sw_batch_size": 0}, "sw_batch_size"),
        ({"overlap": 1.5}, "overlap"),
        ({"roi_size": (4, -1, 4)}, "roi_size"),
    ],
)
def test_sliding_window_classify_validation(model, kwargs, match):
    args = {"roi_size": (4, 4, 4), **kwargs}
    with pytest.raises(ValueError, match=match):
        sliding_window_classify(_volume((2, 8, 8, 8)), model, **args)


def test_rejects_batches_and_dense_models(model):
    with pytest.raises(ValueError, match="one case"):
        sliding_window_classify(_volume((2, 2, 8, 8, 8)), model, 4)
    with pytest.raises(ValueError, match=r"\(C, D, H, W\)"):
        sliding_window_classify(_volume((8, 8, 8)), model, 4)
    dense = nn.Conv3d(2, 3, 1)
    with pytest.raises(ValueError, match=r"\(N, K\) logits"):
        sliding_window_classify(_volume((2, 8, 8, 8)), dense, 4)


# ---------------------------------------------------------------- window_map_affine


@pytest.mark.parametrize("size, roi, overlap", [((30, 21, 9), (8, 6, 4), 0.25), ((5, 16, 12), (8, 8, 12), 0.5)])
def test_window_map_affine_maps_map_voxels_to_window_centres(model, size, roi, overlap):
    # an oblique, anisotropic, shifted volume affine
    theta = 0.3
    rotation = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([2.5, 0.8, 1.2])
    affine[:3, 3] = [-100.0, 40.0, 7.0]

    result = sliding_window_classify(_volume((2, *size)), model, roi, overlap=overlap)
    map_affine = result.map_affine(torch.as_tensor(affine))
    np.testing.assert_allclose(map_affine, window_map_affine(affine, result.starts, roi, result.pad))

    per_axis = [sorted({s[a] for s in result.starts}) for a in range(3)]
    n = result.grid_shape
    for i in range(n[0]):
        for j in range(n[1]):
            for k in range(n[2]):
                # window centre in voxels of the unpadded volume, then in world coordinates
                centre = [per_axis[a][idx] + (roi[a] - 1) / 2 - result.pad[a][0] for a, idx in enumerate((i, j, k))]
                want = affine @ np.array([*centre, 1.0])
                got = map_affine @ np.array([i, j, k, 1.0])
                # exact up to the rounding of starts to whole voxels: at most half a voxel per axis
                offset_voxels = np.abs(np.linalg.solve(affine[:3, :3], got[:3] - want[:3]))
                assert np.all(offset_voxels <= 0.5 + 1e-9), (i, j, k, offset_voxels)


def test_window_map_affine_is_exact_for_integer_steps():
    # 128 with roi 64, overlap 0.25: 3 windows at 0, 32, 64 -> step 32, first centre 31.5
    starts = window_starts((128, 128, 128), 64, 0.25)
    assert sorted({s[0] for s in starts}) == [0, 32, 64]
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    map_affine = window_map_affine(affine, starts, 64)
    np.testing.assert_allclose(map_affine[:3, :3], np.diag([64.0, 64.0, 96.0]))
    np.testing.assert_allclose(map_affine[:3, 3], [63.0, 63.0, 94.5])


def test_window_map_affine_validation():
    with pytest.raises(ValueError, match="4x4"):
        window_map_affine(np.eye(3), [(0, 0, 0)], 4)
    with pytest.raises(ValueError, match="empty"):
        window_map_affine(np.eye(4), [], 4)
