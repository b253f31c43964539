"""Reproducers 01, 02, 05, 07 and 10 of ``shared/bugs/`` (inputs that must work) and the per-file capture of
what imaging libraries print (issue 15, kind 8)."""

from __future__ import annotations

import csv
import os
import threading
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import REPO
from helpers_inputs import affine_for, base_dataset, lesion, patch_nifti_header, save_nifti, write_table
from typer.testing import CliRunner

from medconvnext.cli.main import app
from medconvnext.config import PreprocessingConfig
from medconvnext.data.capture import ReaderWarning, library_output, reporting
from medconvnext.data.datalist import load_datalist
from medconvnext.data.fingerprint import compute_fingerprint, plan_preprocessing
from medconvnext.data.io import GeometryWarning
from medconvnext.data.transforms import LoadCaseImaged
from medconvnext.data.validate import inspect_image

runner = CliRunner()
TINY = ["--set", "model.args.depths=[1,1,1,1]", "--set", "model.args.dims=[8,16,32,64]"]
LABELS = ["cystic"] * 4 + ["solid"] * 4


def test_01_scl_slope_gives_hounsfield_units_to_every_reader(tmp_path):
    """int16 (HU + 1024) / 2 with scl_slope 2, scl_inter -1024: HU (air about -1000, lesion about +400)."""
    d = tmp_path / "data"
    (d / "images").mkdir(parents=True)
    rows = []
    for i, label in enumerate(LABELS):
        hu = lesion(label, seed=i, fg=400.0, bg=-1000.0)
        img = nib.Nifti1Image(np.round((hu + 1024.0) / 2.0).astype(np.int16), affine_for())
        img.header.set_slope_inter(2.0, -1024.0)
        nib.save(img, str(d / f"images/ct_{i:03d}.nii.gz"))
        rows.append({"image": f"images/ct_{i:03d}.nii.gz", "label": label})
    write_table(d / "labels.csv", rows)
    loaded = LoadCaseImaged().load(str(d / "images/ct_004.nii.gz"))
    assert -1032 <= float(loaded.min()) <= -1028 and 428 <= float(loaded.max()) <= 432
    report = inspect_image(d / "images/ct_004.nii.gz")
    assert report.percentiles[0] < -990 and 390 < report.percentiles[2] < 440
    plan = plan_preprocessing(PreprocessingConfig(modality="ct"), compute_fingerprint(load_datalist(d).cases),
                              (32, 32, 32))
    assert plan.intensity == "clip_zscore" and plan.clip[0] < -990 and 390 < plan.clip[1] < 440
    result = runner.invoke(app, ["data", "check", "--data", str(d), "--config", str(REPO / "configs" / "ct.yaml")])
    assert result.exit_code == 0, result.output


def test_02_scl_slope_zero_means_no_scaling(tmp_path):
    """NIfTI-1: scl_slope = 0 means 'no scaling': the stored values, not an all-zero volume."""
    path = save_nifti(tmp_path / "s0.nii", lesion("solid", seed=1), affine_for())
    patch_nifti_header(path, 112, "<ff", 0.0, 0.0)
    loaded = LoadCaseImaged().load(str(path))
    np.testing.assert_array_equal(loaded[0].numpy(), lesion("solid", seed=1).astype(np.int16))
    report = inspect_image(path)
    assert report.problems == [] and 390 < report.percentiles[2] < 440


def _write_cases(d: Path, kind: str) -> None:
    (d / "images").mkdir(parents=True)
    rows = []
    for i, label in enumerate(LABELS):
        if kind == "singleton":  # reproducer 05: a 3D scan saved as (x, y, z, 1)
            image = nib.Nifti1Image(lesion(label, seed=i)[..., None].astype("int16"), affine_for())
        else:  # reproducer 07: big-endian header and data, int16 and one float32
            dtype = ">f4" if i == 7 else ">i2"
            image = nib.Nifti1Image(lesion(label, seed=i).astype(dtype), affine_for(),
                                    header=nib.Nifti1Header(endianness=">"))
            image.set_data_dtype(np.dtype(dtype))
        nib.save(image, str(d / f"images/c_{i:03d}.nii.gz"))
        rows.append({"image": f"images/c_{i:03d}.nii.gz", "label": label})
    write_table(d / "labels.csv", rows)


@pytest.mark.parametrize("kind", ["singleton", "big_endian"])
def test_05_07_singleton_4d_and_big_endian_scans_check_train_and_predict(tmp_path, kind):
    d = tmp_path / "data"
    _write_cases(d, kind)
    loaded = LoadCaseImaged().load(str(d / "images/c_007.nii.gz"))
    assert tuple(loaded.shape) == (1, 32, 32, 32)
    np.testing.assert_array_equal(loaded[0].numpy(), lesion("solid", seed=7).astype(np.int16))
    assert runner.invoke(app, ["data", "check", "--data", str(d)]).exit_code == 0
    result = runner.invoke(app, ["train", "--data", str(d), "--out", str(tmp_path / "run"), "--epochs", "1",
                                 "--batch-size", "2", *TINY])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["predict", str(d / "images/c_007.nii.gz"), "--model", str(tmp_path / "run"),
                                 "--output", str(tmp_path / "p.csv")])
    assert result.exit_code == 0, result.output
    row = next(csv.DictReader(open(tmp_path / "p.csv")))
    probs = [float(v) for k, v in row.items() if k.startswith("prob")]
    assert len(probs) == 2 and abs(sum(probs) - 1) < 1e-4


def test_10_one_class_in_validation_says_why_the_auc_is_undefined_once(tmp_path):
    d = tmp_path / "data"
    base_dataset(d, shape=(16, 16, 16))
    rows = list(csv.DictReader(open(d / "labels.csv")))
    for r in rows:
        r["split"] = "train"
    rows[6]["split"] = rows[7]["split"] = "val"  # both solid
    write_table(d / "labels.csv", rows)
    result = runner.invoke(app, ["train", "--data", str(d), "--out", str(tmp_path / "run"), "--epochs", "2",
                                 "--batch-size", "2", *TINY])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert text.count("the validation set holds only class 'solid' (2 case(s)): the validation AUC is undefined") == 1
    assert "val AUC n/a" in text and "Traceback" not in text
    assert (tmp_path / "run" / "checkpoint_best.safetensors").is_file()


def test_library_output_is_captured_and_reported_once_naming_the_file(capfd):
    """C-level stderr (as ITK/GDCM write it) and foreign Python warnings become one warning naming the file."""
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):  # the same file read twice: reported once
            with reporting("/data/scan.nrrd"):
                os.write(2, b"WARNING: In /src/itkImageSeriesReader.hxx, line 502\n")
                os.write(2, b"ImageSeriesReader (0x55d1): Non uniform sampling detected\n")
                warnings.warn("a MONAI-style note", UserWarning, stacklevel=1)
                warnings.warn(GeometryWarning("ours, passed through"), stacklevel=1)
    assert capfd.readouterr().err == ""
    readers = [w.message for w in caught if w.category is ReaderWarning]
    assert [str(m) for m in readers] == ["/data/scan.nrrd: the image reader reported: UserWarning: a MONAI-style "
                                         "note (+1 more line(s); --debug shows them)"]
    assert "itkImageSeriesReader.hxx, line 502" in readers[0].raw and "Non uniform sampling" in readers[0].raw
    assert sum(w.category is GeometryWarning for w in caught) == 2  # not swallowed by the capture


def test_library_output_leaves_other_threads_alone(capfd):
    """Redirecting descriptor 2 is process-wide: only the main thread captures (a worker thread's text stays)."""
    said: list = []

    def worker() -> None:
        with library_output() as captured:
            os.write(2, b"from a thread\n")
        said.append(captured)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert not said[0] and "from a thread" in capfd.readouterr().err


def test_cli_shows_the_raw_library_text_only_under_debug(capsys):
    from medconvnext.cli import _common

    library_file = str(Path(_common.__file__))  # a warning issued from inside the package
    warning = ReaderWarning("/data/scan.nrrd: the image reader reported: X", raw="RAW ITK TEXT")
    for debug in (False, True):
        _common.State.debug = debug
        try:
            _common._show_warning(warning, ReaderWarning, library_file, 1)
        finally:
            _common.State.debug = False
        err = capsys.readouterr().err
        assert "warning: /data/scan.nrrd: the image reader reported: X" in err
        assert ("RAW ITK TEXT" in err) == debug


def test_itk_read_errors_are_one_line_with_the_root_cause(tmp_path):
    """Not 'Exception thrown in SimpleITK ...: /tmp/SimpleITK-build/.../itkNrrdImageIO.cxx:410:'."""
    from medconvnext.data.io import ImageError, read_header, read_sitk_image

    bad = tmp_path / "bad.nrrd"
    bad.write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4\nencoding: raw\n\n")
    expected = f"{bad}: unreadable (_nrrdReadNrrdParse_sizes: parsed 2 values, but dimension is 3)"
    for read in (read_header, read_sitk_image):
        with pytest.raises(ImageError) as caught:
            read(bad)
        assert str(caught.value) == expected
    assert inspect_image(bad).problems == ["unreadable (_nrrdReadNrrdParse_sizes: parsed 2 values, but dimension is 3)"]
