"""A DICOM folder is one regular volume or is refused with one line naming it (issue 15, kinds 2 and 8):
reproducers 04 (missing slice) and 14 (undecodable pixel data), and the other ways a folder is not one volume."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from helpers_inputs import dicom_dataset, lesion, write_dicom_series
from typer.testing import CliRunner

from medconvnext.cli.main import app
from medconvnext.data.io import GeometryError, ImageError, read_header, read_sitk_image, sitk_array
from medconvnext.data.transforms import LoadCaseImaged
from medconvnext.data.validate import inspect_image

runner = CliRunner()
VOLUME = lesion("solid", shape=(32, 32, 24), seed=7)


def _series(folder, volume=VOLUME, **kwargs):
    write_dicom_series(folder, volume, spacing=(1.5, 1.5, 2.0), **kwargs)
    return folder


def test_a_regular_series_reads_with_its_true_geometry(tmp_path):
    folder = _series(tmp_path / "ok")
    header = read_header(folder)
    assert header.shape == (32, 32, 24)
    np.testing.assert_allclose(header.spacing, (1.5, 1.5, 2.0), atol=1e-6)
    # DICOM's LPS (identity orientation) is L, P, S in RAS terms: x and y flipped
    np.testing.assert_allclose(np.diag(header.affine)[:3], (-1.5, -1.5, 2.0), atol=1e-6)
    loaded = LoadCaseImaged().load(str(folder))
    np.testing.assert_allclose(np.asarray(loaded.affine), header.affine, atol=1e-6)  # loader == header reader
    np.testing.assert_array_equal(loaded[0].numpy(), VOLUME.astype(np.int16))


def test_04_missing_slice_is_refused_everywhere_naming_the_folder_and_the_gap(tmp_path, capfd):
    """Reproducer 04: slices 2 mm apart with the one at z = 24 mm deleted are not stretched to 2.09 mm."""
    data = dicom_dataset(tmp_path / "dicomdata")
    gap = _series(data / "solid" / "case_gap", series_uid="1.2.826.0.1.3680043.2.1125.6.77")
    (gap / "slice_012.dcm").unlink()
    expected = ("non-uniform slice positions: a gap of 4 mm between slice_011.dcm and slice_013.dcm where the "
                "nominal spacing is 2 mm")
    with pytest.raises(GeometryError, match=re.escape(f"{gap}: {expected}")):
        read_header(gap)
    with pytest.raises(GeometryError, match=re.escape(expected)):
        LoadCaseImaged().load(str(gap))
    capfd.readouterr()
    result = runner.invoke(app, ["data", "check", "--data", str(data)])
    assert result.exit_code == 2
    assert f"{gap}: {expected}" in result.output
    assert "ITK" not in capfd.readouterr().err  # no raw C++ warning ("Non uniform sampling ...")


@pytest.mark.parametrize(("damage", "message"), [
    ("two_series", "2 DICOM series in one folder (SeriesInstanceUID 1.2.3.4, 1.2.3.5); put each series in its own"),
    ("duplicate", "two slices at one position (slice_005.dcm and slice_005b.dcm at 10 mm along the slice normal)"),
    ("sizes", "slices of 2 sizes in one series ((16, 16), (32, 32))"),
    ("orientation", "mixed slice orientations (slice_023.dcm: 0\\1\\0\\1\\0\\0 vs slice_000.dcm: 1\\0\\0\\0\\1\\0)"),
    ("tilt", "slice positions drift 0.5 mm sideways per slice (gantry tilt"),
    ("uneven", "non-uniform slice positions: a gap of 3 mm between"),
    ("stray", "1 DICOM file(s) not in the folder's series (e.g. notes.dcm)"),
])
def test_folders_that_are_not_one_volume_are_refused(tmp_path, damage, message):
    folder = tmp_path / "case"
    if damage == "tilt":
        _series(folder, x_shift_per_slice=0.5)
    elif damage == "uneven":
        _series(folder, z_positions=[2.0 * k + (1.0 if k >= 12 else 0.0) for k in range(24)])
    else:
        _series(folder, series_uid="1.2.3.4")
    if damage == "two_series":
        _series(folder, VOLUME[:, :, :4], series_uid="1.2.3.5", prefix="other")
    elif damage == "duplicate":
        shutil.copy(folder / "slice_005.dcm", folder / "slice_005b.dcm")
    elif damage == "sizes":
        write_dicom_series(tmp_path / "small", VOLUME[:16, :16, :], spacing=(1.5, 1.5, 2.0), series_uid="1.2.3.4")
        for k in range(12, 24):
            shutil.copy(tmp_path / "small" / f"slice_{k:03d}.dcm", folder / f"slice_{k:03d}.dcm")
    elif damage == "orientation":
        write_dicom_series(tmp_path / "turned", VOLUME, spacing=(1.5, 1.5, 2.0), series_uid="1.2.3.4",
                           orientation="0\\1\\0\\1\\0\\0")
        shutil.copy(tmp_path / "turned" / "slice_023.dcm", folder / "slice_023.dcm")
    elif damage == "stray":
        (folder / "notes.dcm").write_text("not a DICOM file")
    with pytest.raises(GeometryError) as caught:
        read_sitk_image(folder)
    assert str(caught.value).startswith(f"{folder}: ")
    assert message in caught.value.problem
    report = inspect_image(folder)
    assert report.problems == [caught.value.problem]  # data check says the same, in one line


def test_14_undecodable_pixel_data_names_the_folder_and_the_slice_once(tmp_path, capfd):
    """Reproducer 14: a compressed slice whose stream is damaged: one line, exit 2, no raw OpenJPEG/ITK text."""
    data = tmp_path / "dicomdata"
    for i, label in enumerate(["cystic"] * 3 + ["solid"] * 3):
        write_dicom_series(data / label / f"case_{i}", lesion(label, shape=(32, 32, 16), seed=i),
                           spacing=(1.5, 1.5, 2.0), series_uid=f"1.2.826.0.1.3680043.2.1125.8.{i}", compress=(i == 5))
    bad = data / "solid" / "case_5" / "slice_008.dcm"
    raw = bytearray(bad.read_bytes())
    soi = max(raw.find(b"\xff\xd8\xff"), raw.find(b"\xff\x4f\xff\x51"))  # JPEG SOI or JPEG 2000 SOC
    assert soi > 0  # the writer compressed the pixel data
    for k in range(soi + 20, min(len(raw) - 2, soi + 400)):
        raw[k] = 0xFF if k % 3 else 0x00
    bad.write_bytes(bytes(raw))

    with pytest.raises(ImageError, match=re.escape(f"{bad.parent}: cannot decode the pixel data of slice_008.dcm")):
        read_sitk_image(bad.parent)
    np.testing.assert_array_equal(sitk_array(read_sitk_image(data / "solid" / "case_4"))[..., 0],
                                  lesion("solid", shape=(32, 32, 16), seed=4)[..., 0].astype(np.int16))
    capfd.readouterr()
    result = runner.invoke(app, ["data", "check", "--data", str(data)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if str(bad.parent) in line]
    assert len(lines) == 1 and "cannot decode the pixel data of slice_008.dcm" in lines[0]
    assert capfd.readouterr().err.strip() == ""  # what OpenJPEG/GDCM printed was captured, not leaked
