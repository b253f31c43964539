"""One geometry per scan (issue 15, kind 1) and planning arithmetic (kind 7): reproducers 15, 08 and 12.

The validator, the header reader of the plan, the training/predict loader and the CAM writer must give one
NIfTI the same affine; a file whose sform and qform disagree on spacing or orientation is refused.
"""

from __future__ import annotations

import re
import warnings

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from helpers_inputs import affine_for, base_dataset, lesion, save_nifti, write_table
from helpers_predict import make_checkpoint, tiny_preprocessing
from typer.testing import CliRunner

from medconvnext.cli.main import app
from medconvnext.config import PreprocessingConfig
from medconvnext.data.datalist import load_datalist
from medconvnext.data.fingerprint import ceil_to_multiple, compute_fingerprint, plan_preprocessing, target_spacing
from medconvnext.data.io import GeometryError, GeometryWarning, read_header
from medconvnext.data.transforms import LoadCaseImaged
from medconvnext.data.validate import inspect_image
from medconvnext.engine.inference import Predictor

runner = CliRunner()
SHAPE = (36, 28, 30)


def _two_forms(path, sform, qform, s_code=2, q_code=1):
    img = nib.Nifti1Image(lesion("solid", shape=SHAPE, seed=4).astype(np.int16), sform)
    img.set_sform(sform, s_code)
    img.set_qform(qform, q_code)
    nib.save(img, str(path))
    return path


def test_15_sform_qform_conflict_is_refused_by_every_reader(tmp_path):
    """Reproducer 15: sform (code 2) LPS 2.5x1.5x2 mm, qform (code 1) identity: one line, both codes, everywhere."""
    scan = _two_forms(tmp_path / "scan.nii.gz", affine_for("LPS", (2.5, 1.5, 2.0), SHAPE), np.eye(4))
    expected = "the sform (code 2: LPS 2.5x1.5x2 mm) and the qform (code 1: RAS 1x1x1 mm) disagree"
    with pytest.raises(GeometryError, match=re.escape(expected)):
        read_header(scan)  # fingerprint and plan
    with pytest.raises(GeometryError, match=re.escape(expected)):
        LoadCaseImaged().load(str(scan))  # training, predict, cache
    report = inspect_image(scan)  # data check / the validation gate
    assert len(report.problems) == 1 and report.problems[0].startswith(expected)

    run = make_checkpoint(tmp_path / "run" / "checkpoint_best.safetensors").parent
    result = runner.invoke(app, ["predict", str(scan), "--model", str(run), "--cam", str(tmp_path / "cam"),
                                 "--output", str(tmp_path / "p.csv")])
    assert result.exit_code == 2
    assert f"{scan}: {expected}" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "cam").exists()

    base_dataset(tmp_path / "data", n_per_class=2, shape=(16, 16, 16))
    (tmp_path / "data" / "images" / "scan.nii.gz").write_bytes(scan.read_bytes())
    with open(tmp_path / "data" / "labels.csv", "a") as f:
        f.write("images/scan.nii.gz,solid\n")
    result = runner.invoke(app, ["data", "check", "--data", str(tmp_path / "data")])
    assert result.exit_code == 2 and "code 2" in result.output and "code 1" in result.output


def test_15_forms_that_differ_in_position_only_follow_the_sform_everywhere_and_warn_once(tmp_path):
    """Same spacing and axes, origins 5 mm apart (e.g. a sform to an aligned space): the sform, one warning."""
    sform = affine_for("LPS", (2.5, 1.5, 2.0), SHAPE)
    qform = sform.copy()
    qform[:3, 3] += [3.0, 4.0, 0.0]
    scan = _two_forms(tmp_path / "shifted.nii.gz", sform, qform)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        header = read_header(scan)
        loaded = LoadCaseImaged().load(str(scan))
        report = inspect_image(scan)
    ours = [w for w in caught if issubclass(w.category, GeometryWarning)]
    assert len(ours) == 1 and str(scan) in str(ours[0].message) and "5 mm apart" in str(ours[0].message)
    np.testing.assert_allclose(header.affine, sform, atol=1e-5)
    np.testing.assert_allclose(np.asarray(loaded.affine), sform, atol=1e-5)
    assert report.problems == [] and report.orientation == "LPS" and report.spacing == (2.5, 1.5, 2.0)

    # the CAM is written with the scan's shape and that same affine
    run = make_checkpoint(tmp_path / "run" / "checkpoint_best.safetensors").parent
    result = runner.invoke(app, ["predict", str(scan), "--model", str(run), "--cam", str(tmp_path / "cam"),
                                 "--output", str(tmp_path / "p.csv")])
    assert result.exit_code == 0, result.output
    cam = nib.load(tmp_path / "cam" / "shifted_cam.nii.gz")
    assert cam.shape == SHAPE
    np.testing.assert_allclose(cam.affine, sform, atol=1e-4)
    np.testing.assert_allclose(cam.get_qform(), sform, atol=1e-4)


def test_sform_only_with_stale_pixdim_keeps_the_sform_in_the_loader(tmp_path):
    """MONAI's header correction would swap the sform for a pixdim-scaled affine; the loader keeps the sform."""
    sform = affine_for("RAS", (2.5, 1.5, 2.0), SHAPE)
    img = nib.Nifti1Image(lesion("solid", shape=SHAPE).astype(np.int16), None)
    img.set_sform(sform, 1)
    img.header["qform_code"] = 0
    img.header["pixdim"][1:4] = 1.0  # stale: the NIfTI standard ignores pixdim when only the sform is set
    nib.save(img, str(tmp_path / "s.nii.gz"))
    loaded = LoadCaseImaged().load(str(tmp_path / "s.nii.gz"))
    np.testing.assert_allclose(np.asarray(loaded.affine), sform, atol=1e-5)
    np.testing.assert_allclose(read_header(tmp_path / "s.nii.gz").affine, sform, atol=1e-5)


def test_08_nrrd_with_permuted_direction_is_read_like_the_nifti(tmp_path):
    """Reproducer 08: one volume as NIfTI and as NRRD, voxel axes P, I, R; same affine, tensor, prediction."""
    shape, spacing = (40, 24, 30), (1.2, 2.5, 1.6)
    vol = lesion("cystic", shape=shape, seed=3, centre=(12, 8, 18)).astype(np.int16)
    aff = affine_for("PIR", spacing, shape)
    nib.save(nib.Nifti1Image(vol, aff), str(tmp_path / "scan.nii.gz"))
    img = sitk.GetImageFromArray(vol.transpose(2, 1, 0))
    lps = aff.copy()
    lps[:2] *= -1
    img.SetSpacing(spacing)
    img.SetDirection(tuple((lps[:3, :3] / np.array(spacing)).reshape(-1)))
    img.SetOrigin(tuple(lps[:3, 3]))
    sitk.WriteImage(img, str(tmp_path / "scan.nrrd"))

    nifti, nrrd = str(tmp_path / "scan.nii.gz"), str(tmp_path / "scan.nrrd")
    np.testing.assert_allclose(read_header(nrrd).affine, aff, atol=1e-5)
    np.testing.assert_allclose(read_header(nifti).affine, aff, atol=1e-5)
    assert inspect_image(nrrd).orientation == inspect_image(nifti).orientation == "PIR"
    make_checkpoint(tmp_path / "run" / "checkpoint_best.safetensors", preprocessing=tiny_preprocessing((2.0,) * 3))
    predictor = Predictor.load(tmp_path / "run", device="cpu")
    a, b = predictor.preprocess(nifti), predictor.preprocess(nrrd)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
    np.testing.assert_allclose(predictor.predict_case(nifti).probabilities, predictor.predict_case(nrrd).probabilities,
                               atol=1e-6)


def test_12_float32_spacings_do_not_cost_a_block(tmp_path):
    """Reproducer 12: 0.8 x 0.8 x 5 mm (6 cases) and 0.8 x 0.8 x 1.5 mm (2): plan (0.8, 0.8, 1.5), (64, 64, 64)."""
    d = tmp_path / "data"
    rows = []
    for i, label in enumerate(["cystic", "solid"] * 4):
        thin = i in (2, 5)
        shape = (64, 64, 34) if thin else (64, 64, 10)
        sp = (0.8, 0.8, 1.5) if thin else (0.8, 0.8, 5.0)
        save_nifti(d / f"images/a_{i:03d}.nii.gz", lesion(label, shape=shape, seed=i), affine_for("RAS", sp, shape))
        rows.append({"image": f"images/a_{i:03d}.nii.gz", "label": label})
    write_table(d / "labels.csv", rows)
    fingerprint = compute_fingerprint(load_datalist(d).cases)
    assert fingerprint.spacings[0, 0] != 0.8  # float32 header: 0.800000011920929
    plan = plan_preprocessing(PreprocessingConfig(), fingerprint, (32, 32, 32))
    assert plan.spacing == (0.8, 0.8, 1.5) and plan.input_size == (64, 64, 64)
    result = runner.invoke(app, ["data", "check", "--data", str(d), "--model", "convnext_atto"])
    assert result.exit_code == 0 and "input_size: [64, 64, 64]" in result.output


@pytest.mark.parametrize(("voxels", "block", "expected"), [
    (64.0000008, 32, 64),  # float32 round-off
    (512 * 0.78125 / 0.7812, 32, 512),  # a target spacing rounded to 4 decimals
    (64.5, 32, 96),  # half a voxel more is anatomy: one more block
    (33.3, 32, 64),
    (3.0, 32, 32),  # never below one block
])
def test_ceil_to_multiple_ignores_round_off_only(voxels, block, expected):
    assert ceil_to_multiple(voxels, block) == expected


def test_anisotropy_threshold_is_not_crossed_by_float32_round_off():
    """Slices exactly 3x the pixel size (float32 2.4 / 0.8 = 3.0000001) are not 'strongly anisotropic'."""
    spacings = np.array([[0.8, 0.8, 2.4]] * 4 + [[0.8, 0.8, 0.8]], dtype=np.float32).astype(float)
    assert target_spacing(spacings) == [0.8, 0.8, 2.4]  # the median, not the 10th percentile (0.8)
