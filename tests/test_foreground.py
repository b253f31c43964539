"""Planning keeps the whole field: foreground boxes, the voxel budget, the field-of-view share, CT statistics from
the body; a finding at the lung periphery stays inside the model input (issue: full-size CT and MRI)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medconvnext.config import PreprocessingConfig
from medconvnext.data.datalist import Case
from medconvnext.data.fingerprint import (
    ceil_to_multiple,
    compute_fingerprint,
    field_of_view,
    fit_spacing,
    plan_preprocessing,
)
from medconvnext.data.foreground import body_mask, foreground_box
from medconvnext.data.pipeline import PreprocessingPipeline
from medconvnext.data.synthetic import chest_ct, save_phantom

torch.set_num_threads(1)
SHAPE, SPACING = (128, 128, 48), (3.0, 3.0, 6.0)


def _cases(tmp_path, count=3, periphery=True):
    cases, phantoms = [], []
    for i in range(count):
        phantom = chest_ct(SHAPE, SPACING, nodule=True, seed=i, radius_mm=7.5, periphery=periphery)
        path = tmp_path / f"ct{i}.nii.gz"
        save_phantom(phantom, str(path))
        cases.append(Case(f"ct{i}", (str(path),), "nodule"))
        phantoms.append(phantom)
    return cases, phantoms


def test_body_box_keeps_the_patient_and_drops_air_and_the_table():
    phantom = chest_ct(SHAPE, SPACING, nodule=False, seed=0)
    hu = phantom.hu.copy()
    hu[2:6, 2:6, :] = 300  # a small bright object apart from the body (a table edge, a cable)
    box = foreground_box(hu, "body")
    body = hu > -500
    body[2:6, 2:6, :] = False
    hits = [np.flatnonzero(body.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    for (start, end), axis_hits in zip(box, hits, strict=True):
        assert start <= axis_hits[0] and end >= axis_hits[-1] + 1  # never cuts the body
        assert end - start <= axis_hits[-1] + 1 - axis_hits[0] + 6  # and keeps at most a stride of air per side
    assert box[0][0] > 6  # the table corner is not part of it
    mask = body_mask(phantom.hu)
    lung = tuple(int(v) for v in np.argwhere(phantom.hu == -850)[0])
    assert mask[lung]  # lungs are inside the body (holes filled per slice), the air outside is not
    assert not mask[0, 0, 0]
    assert foreground_box(np.zeros((4, 5, 6)), "nonzero") == ((0, 4), (0, 5), (0, 6))  # nothing: keep all
    with pytest.raises(ValueError, match="crop must be one of"):
        foreground_box(hu, "lungs")


def test_budget_coarsens_the_finest_axes_first_and_fits():
    spacing = fit_spacing([0.7, 0.7, 5.0], [350.0, 250.0, 300.0], 64**3, (8, 8, 8))
    assert spacing[0] == spacing[1] > 0.7 and spacing[2] == 5.0  # thick slices kept, in-plane coarsened
    voxels = np.prod([ceil_to_multiple(e / s, 8) for e, s in zip([350.0, 250.0, 300.0], spacing, strict=True)])
    assert voxels <= 64**3
    assert fit_spacing([1.0, 1.0, 1.0], [20.0, 20.0, 20.0], 64**3, (8, 8, 8)) == [1.0, 1.0, 1.0]
    extents = np.array([[100.0, 100.0, 100.0], [200.0, 100.0, 100.0]])
    assert field_of_view((100, 100, 100), (1.0, 1.0, 1.0), extents) == (0.5, 0.75, 1, 2)
    # round-off within 0.1 % per axis is whole: never "cuts ... (as little as 100% inside)"
    assert field_of_view((100, 100, 100), (1.0, 1.0, 1.0), np.array([[100.09, 100.09, 100.09]]))[2] == 0


def test_ct_plan_sees_the_whole_body_and_a_peripheral_nodule(tmp_path):
    cases, phantoms = _cases(tmp_path)
    config = PreprocessingConfig(modality="ct", max_input_voxels=48**3)
    plan = plan_preprocessing(config, compute_fingerprint(cases), (8, 8, 8))
    assert plan.crop == "body" and plan.field_of_view[2] == 0 and plan.field_of_view[0] == pytest.approx(1.0, abs=2e-3)
    assert np.prod(plan.input_size) <= 48**3
    # the window comes from the body (lungs at -850 to tissue and bone), not from the air outside (-1000, -1024)
    assert -900 < plan.clip[0] < -800 and plan.clip[1] >= 40
    lung = (-850 - plan.mean) / plan.std
    tissue = (40 - plan.mean) / plan.std
    variant = PreprocessingPipeline(plan).deterministic("cropped", keep_meta=True)
    for case, phantom in zip(cases, phantoms, strict=True):
        out = variant({"image": case.images[0]})["image"]
        index = np.linalg.inv(np.asarray(out.affine, dtype=float)) @ np.array([*phantom.nodule_mm, 1.0])
        voxel = tuple(int(round(v)) for v in index[:3])
        assert all(0 <= v < s for v, s in zip(voxel, plan.input_size, strict=True)), (voxel, plan.input_size)
        assert float(out[(0, *voxel)]) > lung + 0.3 * (tissue - lung)  # the nodule, not lung


def test_a_fixed_input_that_cuts_foreground_warns_once_with_the_share(tmp_path):
    cases, _ = _cases(tmp_path, count=2)
    config = PreprocessingConfig(modality="ct", spacing=[6.0, 6.0, 6.0], input_size=[32, 32, 32])
    with pytest.warns(UserWarning, match=r"cuts the foreground of 2 of 2 training cases \(as little as \d+% inside\)"):
        plan = plan_preprocessing(config, compute_fingerprint(cases), (8, 8, 8))
    assert plan.field_of_view[0] < 1.0


def test_maps_invert_the_crop_and_resampling_onto_the_scan(tmp_path):
    """Saliency and window maps go through the variant's inverse: back on the scan's own grid, zero outside the
    body box the model saw."""
    import nibabel as nib

    cases, _ = _cases(tmp_path, count=1)
    plan = plan_preprocessing(PreprocessingConfig(modality="ct", max_input_voxels=32**3), compute_fingerprint(cases),
                              (8, 8, 8))
    variant = PreprocessingPipeline(plan).deterministic("cropped", keep_meta=True)
    out = variant({"image": cases[0].images[0]})["image"]
    restored = variant.to_scan_grid(out, torch.ones((1, *out.shape[1:])))
    scan = nib.load(cases[0].images[0])
    assert tuple(restored.shape[1:]) == scan.shape
    np.testing.assert_allclose(np.asarray(restored.affine, dtype=float), scan.affine, atol=1e-4)
    box = foreground_box(np.asarray(scan.dataobj), "body")
    inside = restored[(0, *(slice(a, b) for a, b in box))]
    assert float(inside.mean()) > 0.9  # the body box is covered
    outside = restored[0].clone()
    outside[tuple(slice(a, b) for a, b in box)] = 0
    assert float(outside.abs().max()) < 1e-6  # nothing outside the crop


def test_crop_transform_crops_to_the_foreground_box_and_inverts():
    from monai.data import MetaTensor

    from medconvnext.data.foreground import CropToForegroundd

    phantom = chest_ct(SHAPE, SPACING, nodule=False, seed=1)
    image = MetaTensor(torch.from_numpy(phantom.hu.astype(np.float32))[None], affine=torch.eye(4))
    box = foreground_box(phantom.hu, "body")
    crop = CropToForegroundd("image", "body")
    cropped = crop({"image": image})["image"]
    assert tuple(cropped.shape[1:]) == tuple(b - a for a, b in box)
    assert torch.equal(cropped.as_tensor()[0], image.as_tensor()[0][tuple(slice(a, b) for a, b in box)])
    restored = crop.inverse({"image": cropped})["image"]
    assert restored.shape == image.shape  # padded back onto the scan's grid
    with pytest.raises(ValueError, match="crop must be one of"):
        CropToForegroundd("image", "lungs")


def test_nifti_arrays_become_c_order_float32_with_the_same_values():
    from medconvnext.data.readers import c_order_float32

    fortran = np.asfortranarray(np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7) - 100)
    out = c_order_float32(fortran)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, fortran.astype(np.float32))
    swapped = fortran.astype(">i2", order="F")  # big-endian: torch cannot view it, so numpy's path keeps it
    assert c_order_float32(swapped) is swapped
    c_order = np.zeros((2, 3, 4), np.int16)
    assert c_order_float32(c_order) is c_order
