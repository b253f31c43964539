"""Fingerprint -> plan: anisotropic spacing rule, modality intensity, CT statistics; augmentation presets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import write_volume

from medconvnext.choices import Augment, choices
from medconvnext.config import PreprocessingConfig
from medconvnext.data.datalist import Case
from medconvnext.data.fingerprint import Fingerprint, compute_fingerprint, plan_preprocessing, target_spacing
from medconvnext.data.pipeline import PreprocessingPipeline
from medconvnext.data.preprocessing import PreprocessingPlan
from medconvnext.data.transforms import augmentation_transforms

torch.set_num_threads(1)


def test_anisotropic_coarse_axis_takes_the_10th_percentile():
    spacings = np.array([[0.8, 0.8, z] for z in (1.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0)])
    assert target_spacing(spacings) == [0.8, 0.8, 5.0]  # 10th percentile of z is 5.0 here
    spacings[:3, 2] = 1.2
    assert target_spacing(spacings)[2] == pytest.approx(1.2)
    iso = np.array([[1.0, 1.0, 2.0], [1.0, 1.0, 2.5]])
    assert target_spacing(iso) == [1.0, 1.0, 2.25]  # not anisotropic enough: plain median


def test_ct_plan_computes_clip_and_statistics(tmp_path):
    rng = np.random.default_rng(0)
    cases = []
    for i in range(3):
        data = np.full((12, 12, 12), -1024.0, np.float32)  # outside the scanner's field of view
        data[2:10, 2:10, 2:10] = rng.normal(40, 100, (8, 8, 8))
        path = write_volume(tmp_path / f"ct{i}.nii.gz", data)
        cases.append(Case(f"ct{i}", (str(path),), "a"))
    fingerprint = compute_fingerprint(cases)
    plan = plan_preprocessing(PreprocessingConfig(modality="ct"), fingerprint, (8, 8, 8))
    assert plan.intensity == "clip_zscore" and -400 < plan.clip[0] < -100 and 200 < plan.clip[1] < 400
    assert plan.mean == pytest.approx(40, abs=15) and plan.std == pytest.approx(100, rel=0.15)
    fixed = plan_preprocessing(PreprocessingConfig(modality="ct", clip=[-100, 100]), fingerprint, (8, 8, 8))
    assert fixed.clip == (-100.0, 100.0) and fixed.std < 100
    assert plan.crop == "body"
    out = PreprocessingPipeline(plan).deterministic()({"image": cases[0].images[0]})["image"]
    air = (-1024 - plan.mean) / plan.std
    assert abs(float(out[out > air + 0.1].mean())) < 0.5  # the body z-scored to about 0
    mri = plan_preprocessing(PreprocessingConfig(modality="mri"), fingerprint, (8, 8, 8))
    assert mri.intensity == "nonzero_zscore" and mri.clip is None
    assert plan_preprocessing(PreprocessingConfig(modality="mask"), fingerprint, (8, 8, 8)).intensity == "minmax"
    generic = plan_preprocessing(PreprocessingConfig(), Fingerprint(np.ones((1, 3)), np.full((1, 3), 20.0)), (8, 8, 8))
    assert generic.intensity == "zscore" and generic.input_size == (24, 24, 24)


def test_generic_auto_plans_minmax_for_two_valued_masks_only(tmp_path):
    rng = np.random.default_rng(0)
    masks, images = [], []
    for i in range(7):
        mask = np.zeros((12, 12, 12), np.float32)
        mask[3 : 5 + i, 4:8, 4:8] = 255.0  # 0/255 like MedMNIST, objects of different sizes
        masks.append(Case(f"m{i}", (str(write_volume(tmp_path / f"m{i}.nii.gz", mask)),), "a"))
        image = rng.normal(0, 1, (12, 12, 12)).astype(np.float32)
        images.append(Case(f"i{i}", (str(write_volume(tmp_path / f"i{i}.nii.gz", image)),), "a"))
    with pytest.warns(UserWarning, match="two values only .*minmax"):
        assert plan_preprocessing(PreprocessingConfig(), compute_fingerprint(masks), (8, 8, 8)).intensity == "minmax"
    assert plan_preprocessing(PreprocessingConfig(), compute_fingerprint(images), (8, 8, 8)).intensity == "zscore"
    # one intensity image among the sampled cases keeps z-score; an explicit choice is never overridden
    mixed = compute_fingerprint(masks[:6] + images[:1])
    assert plan_preprocessing(PreprocessingConfig(), mixed, (8, 8, 8)).intensity == "zscore"
    explicit = PreprocessingConfig(intensity="zscore")
    assert plan_preprocessing(explicit, compute_fingerprint(masks), (8, 8, 8)).intensity == "zscore"


@pytest.mark.parametrize("kind", choices(Augment))
def test_augmentation_presets_keep_the_shape(kind):
    from monai.transforms import Compose

    pre = PreprocessingPlan("RAS", (1.0, 1.0, 1.0), (8, 8, 12), "zscore")
    steps = Compose(augmentation_transforms(kind, pre.input_size))
    steps.set_random_state(0)
    image = torch.rand(1, 8, 8, 12)
    assert steps({"image": image})["image"].shape == (1, 8, 8, 12)


def test_minmax_intensity_maps_a_mask_to_zero_and_one_whatever_its_size(tmp_path):
    """z-score would give a small mask a brighter foreground than a large one; minmax gives both 1, background 0."""
    outputs = []
    for name, side in (("small", 2), ("large", 6)):
        data = np.zeros((10, 10, 10), np.float32)
        data[2:2 + side, 2:2 + side, 2:2 + side] = 255.0
        path = write_volume(tmp_path / f"{name}.nii.gz", data)
        pre = PreprocessingPlan("RAS", None, (12, 12, 12), "minmax")
        outputs.append(PreprocessingPipeline(pre).deterministic()({"image": str(path)})["image"])
    for out, side in zip(outputs, (2, 6), strict=True):
        assert float(out.min()) == 0.0 and float(out.max()) == 1.0
        assert int((out == 1.0).sum()) == side**3 and int((out == 0.0).sum()) == 12**3 - side**3
    zscored = [PreprocessingPipeline(PreprocessingPlan("RAS", None, (12, 12, 12), "zscore")).deterministic()(
        {"image": str(tmp_path / f"{name}.nii.gz")})["image"].max() for name in ("small", "large")]
    assert zscored[0] > 2 * zscored[1]


def test_resampling_a_mask_keeps_partial_volumes_and_the_volume(tmp_path):
    """A 1 mm mask resampled to 2.29 mm (the AdrenalMNIST3D 64³ -> 28³ grid) keeps each boundary voxel's occupied
    fraction instead of re-binarising it, so the object's volume, the size cue, survives the coarser grid."""
    grid = np.mgrid[:48, :48, :48].astype(np.float32) - 23.5
    data = np.where((grid**2).sum(0) <= 11.3**2, 255.0, 0.0).astype(np.float32)
    path = write_volume(tmp_path / "sphere.nii.gz", data)
    spacing = 64 / 28
    pre = PreprocessingPlan("RAS", (spacing, spacing, spacing), (32, 32, 32), "minmax")
    out = PreprocessingPipeline(pre).deterministic()({"image": str(path)})["image"].numpy()
    fractional = ((out > 0.01) & (out < 0.99)).sum() / (out > 0.01).sum()
    assert fractional > 0.15  # a re-binarised mask has none
    volume_mm3 = float(out.sum()) * spacing**3
    assert volume_mm3 == pytest.approx(float((data > 0).sum()), rel=0.03)
