"""DICOM values and geometry that vary per slice or per frame (issue 31, kind 1), and reproducers 16, 22, 24 of
``shared/bugs/`` rebuilt here (no shared/ needed), against a reference decode: the stored integers times each
slice's own RescaleSlope plus its RescaleIntercept."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from helpers_dicom import write_dicom, write_series
from helpers_inputs import affine_for, lesion
from typer.testing import CliRunner

from medconvnext.cli.main import app
from medconvnext.data.io import read_voxels
from medconvnext.data.transforms import LoadCaseImaged
from medconvnext.data.validate import inspect_image

runner = CliRunner()
SHAPE = (16, 16, 12)


def _pet_series(folder, seed: int = 3, label: str = "solid"):
    """PET-like activities (about 4.0 in the lesion, 0.5 around), each slice int16 with its own slope; the lowest
    slice empty with slope 1 (ITK then takes int16 for the whole series). Returns the reference (x, y, z)."""
    act = lesion(label, shape=SHAPE, seed=seed) / 100.0
    act[:, :, 0] = 0.0
    slopes = [1.0] + [float(act[:, :, k].max()) / 32000.0 for k in range(1, SHAPE[2])]
    stored = np.stack([np.round(act[:, :, k] / slopes[k]) for k in range(SHAPE[2])], axis=-1).astype(np.int16)
    write_series(folder, stored, "PT", f"1.2.826.0.1.3680043.2.1125.16.{seed}",
                 per_slice=lambda k: {(0x0028, 0x1053): f"{slopes[k]:.6g}", (0x0028, 0x1052): "0"})
    return stored * np.array([float(f"{s:.6g}") for s in slopes])


def test_16_per_slice_rescale_slopes_load_the_true_float_values(tmp_path):
    folder = tmp_path / "case"
    reference = _pet_series(folder)
    series = sitk.ImageSeriesReader()
    series.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    itk_alone = sitk.GetArrayFromImage(series.Execute())
    assert itk_alone.dtype == np.int16 and itk_alone.max() == 4  # the bug: ITK truncates to the first slice's type
    voxels = read_voxels(folder)
    assert voxels.dtype == np.float32 and voxels.shape == SHAPE
    np.testing.assert_allclose(voxels, reference, rtol=1e-6, atol=1e-6)
    loaded = LoadCaseImaged()({"image": str(folder)})["image"]  # the training and predict reader
    assert float(loaded.max()) == pytest.approx(float(reference.max()), rel=1e-6)
    percentiles = inspect_image(folder).percentiles
    assert percentiles[1] == pytest.approx(np.percentile(reference, 50), abs=0.05)  # about 0.5, not 0
    assert percentiles[2] == pytest.approx(np.percentile(reference, 99.5), abs=0.05)  # about 4.3, not 4


def test_16_data_check_prints_the_float_activities(tmp_path):
    for i, label in enumerate(["cystic"] * 2 + ["solid"] * 2):
        _pet_series(tmp_path / "pet" / label / f"case_{i}", seed=i, label=label)
    result = runner.invoke(app, ["data", "check", "--data", str(tmp_path / "pet")])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("intensity (median over cases)"))
    p50, p995 = (float(line.split(f"{p} ")[1].split(",")[0]) for p in ("p50", "p99.5"))
    assert p50 == pytest.approx(0.5, abs=0.1) and p995 == pytest.approx(4.3, abs=0.2), line


def test_a_multi_frame_dicom_is_refused_naming_the_file(tmp_path):
    stored = lesion("solid", shape=SHAPE).astype(np.int16)
    frames = np.stack([stored[:, :, k].T for k in range(SHAPE[2])])  # (frames, rows, cols)
    tags = {(0x0008, 0x0016): "1.2.840.10008.5.1.4.1.1.2", (0x0008, 0x0018): "1.2.3.4.1", (0x0008, 0x0060): "CT",
            (0x0020, 0x000E): "1.2.3.4", (0x0020, 0x0032): "0\\0\\0", (0x0020, 0x0037): "1\\0\\0\\0\\1\\0",
            (0x0028, 0x0030): "2\\2", (0x0018, 0x0050): "5"}  # positions per frame not given: no spacing to trust
    write_dicom(tmp_path / "enhanced" / "IM0001", frames, tags)
    problems = inspect_image(tmp_path / "enhanced").problems
    assert problems == ["IM0001 is a multi-frame DICOM (12 frames in one file), whose per-frame positions, spacing "
                        "and scaling medconvnext does not read; convert it with dcm2niix (pip install dcm2niix) and "
                        "use the NIfTI"]


def test_22_two_echoes_in_one_series_are_refused(tmp_path):
    vol = lesion("solid", shape=SHAPE).astype(np.int16)
    folder = tmp_path / "case_me"
    for echo, (scale, te) in enumerate(((1.0, 10), (0.4, 80))):
        write_series(folder, (vol * scale).astype(np.int16), "MR", "1.2.3.22", name=f"e{echo}_{{k:03d}}.dcm",
                     per_slice=lambda k, te=te: {(0x0018, 0x0081): str(te)})
    problems = inspect_image(folder).problems
    assert len(problems) == 1 and problems[0].startswith("two slices at one position (e0_000.dcm and e1_000.dcm")


def test_24_uint16_above_32767_reads_the_same_from_dicom_nifti_and_nrrd(tmp_path):
    import nibabel as nib

    vol = lesion("solid", shape=SHAPE, fg=50000, bg=20000).astype(np.uint16)
    write_series(tmp_path / "scan_dicom", vol, "MR", "1.2.3.24")
    nib.save(nib.Nifti1Image(vol, affine_for("LPS", (2.0, 2.0, 2.0), SHAPE)), str(tmp_path / "scan.nii.gz"))
    img = sitk.GetImageFromArray(vol.transpose(2, 1, 0))
    img.SetSpacing((2.0, 2.0, 2.0))
    sitk.WriteImage(img, str(tmp_path / "scan.nrrd"))
    loaded = [LoadCaseImaged()({"image": str(tmp_path / name)})["image"]
              for name in ("scan_dicom", "scan.nii.gz", "scan.nrrd")]
    for x in loaded:
        assert float(x.min()) >= 19970 and float(x.max()) == float(vol.max()) > 50000 - 40
        np.testing.assert_array_equal(np.asarray(x), np.asarray(loaded[0]))
