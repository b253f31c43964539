"""Issue 31, input integrity round 2, kinds the reproducers 19-21 of ``shared/bugs/`` show (rebuilt here with tiny
inputs, no shared/ needed): every file whose bytes become voxels is in the content digest; values no scan holds
are refused; one label written two ways; tables and paths that are not what they seem."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from helpers_inputs import base_dataset, lesion, save_nifti, write_table
from helpers_predict import make_checkpoint
from typer.testing import CliRunner

from medconvnext.cli.main import app
from medconvnext.data.content import file_digest
from medconvnext.data.dataset import make_dataset
from medconvnext.data.pipeline import PreprocessingPipeline
from medconvnext.data.preprocessing import PreprocessingPlan
from medconvnext.data.validate import inspect_image, inspect_images
from medconvnext.errors import UserError

runner = CliRunner()


def _one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output and "unexpected failure" not in result.output
    return lines[0]


@pytest.fixture
def run_dir(tmp_path):
    return make_checkpoint(tmp_path / "run" / "checkpoint_best.safetensors").parent


# --------------------------------------------------------------------------- kind 2: detached data in the digest


def _write_mhd(path: Path, seed: int = 0) -> Path:
    img = sitk.GetImageFromArray(lesion("solid", shape=(16, 16, 16), seed=seed).astype(np.int16).transpose(2, 1, 0))
    img.SetSpacing((2.0, 2.0, 2.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), useCompression=False)  # .mhd + .raw
    return path


def test_20_a_rewritten_raw_under_an_unchanged_mhd_is_validated_again(tmp_path, run_dir):
    mhd = _write_mhd(tmp_path / "data" / "case_004.mhd")
    raw = mhd.with_suffix(".raw")
    before = file_digest(mhd)
    assert inspect_images([mhd])[0].problems == []
    raw.write_bytes(b"\0" * raw.stat().st_size)  # a blank scan, header untouched
    assert file_digest(mhd) != before
    assert inspect_images([mhd])[0].problems == ["every voxel equals 0 (an empty or blank volume)"]
    line = _one_error_line(runner.invoke(app, ["predict", str(mhd), "--model", str(run_dir)]))
    assert line == f"error: {mhd}: every voxel equals 0 (an empty or blank volume)"
    fresh = tmp_path / "fresh"  # a never-seen blank scan whose header bytes equal a checked case's
    fresh.mkdir()
    (fresh / "blank.mhd").write_bytes(_write_mhd(tmp_path / "other" / "case_004.mhd").read_bytes())
    (fresh / "case_004.raw").write_bytes(b"\0" * raw.stat().st_size)
    assert file_digest(fresh / "blank.mhd") != file_digest(tmp_path / "other" / "case_004.mhd")


def test_20_the_disk_cache_makes_a_new_entry_for_a_rewritten_raw(tmp_path):
    pre = PreprocessingPlan(orientation="RAS", spacing=(2.0, 2.0, 2.0), input_size=(16, 16, 16), intensity="none")
    mhd = _write_mhd(tmp_path / "case.mhd")
    records = [{"image": str(mhd), "label": 0, "case_id": "case"}]
    first = make_dataset(records, PreprocessingPipeline(pre).deterministic(), "disk", cache_dir=tmp_path / "cache")
    old = first[0]["image"]
    stat = mhd.with_suffix(".raw").stat()
    _write_mhd(tmp_path / "case.mhd", seed=5)  # other voxels, same size; old mtime restored
    os.utime(mhd.with_suffix(".raw"), ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = make_dataset(records, PreprocessingPipeline(pre).deterministic(), "disk", cache_dir=tmp_path / "cache")
    new = second[0]["image"]
    assert second.misses == 1 and not np.array_equal(np.asarray(new), np.asarray(old))


def _nhdr(path: Path, data_file: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 16 16 16\n"
                    "space directions: (2,0,0) (0,2,0) (0,0,2)\nendian: little\nencoding: raw\n"
                    "space origin: (0,0,0)\n" f"data file: {data_file}\n\n", encoding="ascii")
    return path


def test_nrrd_detached_data_and_analyze_pairs_are_in_the_digest(tmp_path):
    vol = lesion("solid", shape=(16, 16, 16)).astype("<i2")
    nhdr = _nhdr(tmp_path / "scan.nhdr", "scan.raw")
    (tmp_path / "scan.raw").write_bytes(vol.tobytes(order="F"))
    pair = tmp_path / "pair.hdr"
    nib.save(nib.Nifti1Pair(vol, np.diag([2.0, 2.0, 2.0, 1.0])), str(pair))
    before = {p: file_digest(p) for p in (nhdr, pair)}
    assert [r.problems for r in inspect_images([nhdr, pair])] == [[], []]
    from medconvnext.data.transforms import LoadCaseImaged

    for header in (nhdr, pair):  # the training and predict reader reads the voxels the digest covers
        np.testing.assert_array_equal(np.asarray(LoadCaseImaged()({"image": str(header)})["image"])[0], vol)
    for data in (tmp_path / "scan.raw", tmp_path / "pair.img"):
        raw = bytearray(data.read_bytes())
        raw[-2:] = b"\x01\x02"  # one voxel changed, headers untouched
        data.write_bytes(bytes(raw))
    assert all(file_digest(p) != d for p, d in before.items())


@pytest.mark.parametrize("name, words", [("../outside.raw", "points outside the header's folder"),
                                         ("/etc/passwd", "points outside the header's folder"),
                                         ("missing.raw", "not found")])
def test_a_data_file_path_from_a_header_is_checked_before_it_is_followed(tmp_path, run_dir, name, words):
    (tmp_path / "outside.raw").write_bytes(b"\0" * 16 * 16 * 16 * 2)
    nhdr = _nhdr(tmp_path / "data" / "scan.nhdr", name)
    mhd = _write_mhd(tmp_path / "data" / "case.mhd")
    mhd.write_text(mhd.read_text().replace("ElementDataFile = case.raw", f"ElementDataFile = {name}"))
    for header, field in ((nhdr, "data file"), (mhd, "ElementDataFile")):
        problems = inspect_image(header).problems
        assert len(problems) == 1 and problems[0].startswith(f"{field} {name!r} {words}")
        line = _one_error_line(runner.invoke(app, ["predict", str(header), "--model", str(run_dir)]))
        assert line.startswith(f"error: {header}: {field} {name!r} {words}")
    with pytest.raises(UserError, match="points outside|not found"):
        file_digest(nhdr)  # the digest never hashes a file outside the header's folder


# --------------------------------------------------------------------------- kind 5: one label written two ways


def _relabel(data: Path, labels: list[str]) -> Path:
    import csv

    with open(data / "labels.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row, label in zip(rows, labels, strict=True):
        row["label"] = label
    return write_table(data / "labels.csv", rows)


@pytest.mark.parametrize("labels, message", [
    (["0", "00", "00", "0", "1", "01", "01", "1"], "labels '0' (row 2) and '00' (row 3) are the same number"),
    (["0", "0", "0", "0", "1", "1", "1.0", "1"], "labels '1' (row 6) and '1.0' (row 8) are the same number"),
    (["cystic"] * 4 + ["solid", "Solid", "solid", "solid"], "labels 'solid' (row 6) and 'Solid' (row 7) differ only in "
                                                            "case"),
])
def test_19_one_label_written_two_ways_is_refused_naming_both_spellings_and_rows(tmp_path, labels, message):
    data = base_dataset(tmp_path / "data").parent
    table = _relabel(data, labels)
    for command in (["data", "check", "--data", str(data)],
                    ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1"]):
        line = _one_error_line(runner.invoke(app, command))
        assert line == f"error: {table}: {message}: one class written two ways; write one spelling for every case of " \
                       "that class"
    assert not (tmp_path / "run").exists()


def test_a_label_spelled_otherwise_than_the_run_s_class_is_named():
    from medconvnext.data.datalist import same_label

    assert same_label("00", ["0", "1"]) == "0" and same_label("1.0", ["0", "1"]) == "1"
    assert same_label("Solid", ["cystic", "solid"]) == "solid" and same_label("2", ["0", "1"]) is None


def test_surrounding_spaces_are_not_part_of_a_label(tmp_path):
    from medconvnext.data.datalist import load_datalist

    data = base_dataset(tmp_path / "data").parent
    _relabel(data, ["cystic", " cystic", "cystic ", "cystic", "solid", "solid", " solid ", "solid"])
    assert load_datalist(data).classes == ["cystic", "solid"]


# --------------------------------------------------------------------------- kind 8: tables and paths


def test_a_latin1_table_is_exit_2_naming_the_file_and_row_on_every_command(tmp_path, run_dir):
    data = base_dataset(tmp_path / "data").parent
    table = data / "labels.csv"
    text = table.read_text(encoding="utf-8").replace("images/case_002", "images/café_002")
    (data / "images" / "case_002.nii.gz").rename(data / "images" / "café_002.nii.gz")
    table.write_bytes(text.encode("latin-1"))
    expected = f"error: {table}, row 4: not UTF-8 text (byte 0xe9"
    for command in (["data", "check", "--data", str(data)], ["predict", str(table), "--model", str(run_dir)],
                    ["train", "--data", str(data), "--out", str(tmp_path / "out")],
                    ["cv", "--data", str(data), "--out", str(tmp_path / "cv")]):
        assert _one_error_line(runner.invoke(app, command)).startswith(expected), command
    assert not (tmp_path / "out").exists() and not (tmp_path / "cv").exists()


def test_a_symlink_loop_is_one_line_exit_2_on_every_command(tmp_path, run_dir):
    data = base_dataset(tmp_path / "data").parent
    loop = data / "images" / "loop.nii.gz"
    loop.symlink_to(loop.name)
    with open(data / "labels.csv", "a", encoding="utf-8") as f:
        f.write("images/loop.nii.gz,solid\n")
    words = f"{loop} is a symlink loop (a link that leads back to itself); fix the link"
    line = _one_error_line(runner.invoke(app, ["data", "check", "--data", str(data)]))
    assert line == f"error: {data / 'labels.csv'}, row 10: {words}"
    assert _one_error_line(runner.invoke(app, ["predict", str(loop), "--model", str(run_dir)])) == f"error: {words}"
    classes = tmp_path / "classes"
    (classes / "a").mkdir(parents=True)
    (classes / "b").mkdir()
    (classes / "a" / "x.nii.gz").symlink_to("x.nii.gz")
    line = _one_error_line(runner.invoke(app, ["data", "check", "--data", str(classes)]))
    assert line.startswith(f"error: {classes / 'a' / 'x.nii.gz'}: a broken symlink or a symlink loop")


# --------------------------------------------------------------------------- kind 6: DICOM recognised by content


def test_23_dicom_without_a_dcm_suffix_is_read_as_a_series(tmp_path, run_dir):
    from helpers_inputs import dicom_dataset, write_dicom_series

    data = dicom_dataset(tmp_path / "dicomdata", shape=(16, 16, 12))
    for name, rename in (("case_cd", lambda k: f"IM{k + 1:04d}"), ("case_ima", lambda k: f"SLICE.{k + 1:04d}.IMA")):
        folder = data / "solid" / name
        paths = write_dicom_series(folder, lesion("solid", shape=(16, 16, 12), seed=8), spacing=(1.5, 1.5, 2.0),
                                   series_uid=f"1.2.826.0.1.3680043.2.1125.23.{len(name)}")
        for k, p in enumerate(paths):
            p.rename(folder / rename(k))
    result = runner.invoke(app, ["data", "check", "--data", str(data)])
    assert result.exit_code == 0 and "8 cases, 8 usable" in result.output, result.output
    result = runner.invoke(app, ["predict", str(data / "solid" / "case_cd"), "--model", str(run_dir)])
    assert result.exit_code == 0 and "case_cd" in result.output, result.output
    lone = data / "solid" / "case_cd" / "IM0001"
    line = _one_error_line(runner.invoke(app, ["predict", str(lone), "--model", str(run_dir)]))
    assert line == f"error: {lone}: a single DICOM file (one slice); give the folder holding its series (one " \
                   "folder = one scan)"
    (data / "solid" / "loose").mkdir()
    (data / "solid" / "case_cd" / "IM0003").rename(data / "solid" / "IM0003")  # a lone slice beside the series
    (data / "cystic" / "notes.txt").write_text("x")
    line = _one_error_line(runner.invoke(app, ["data", "check", "--data", str(data)]))
    for bad in ("cystic/notes.txt: not a supported image file", "solid/IM0003: a single DICOM file",
                "solid/loose: a folder without DICOM files"):
        assert bad in line  # every bad entry, not only the first


# --------------------------------------------------------------------------- kind 3: values no scan holds


def _sentinel_dataset(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The base set, a float copy of a solid case with one voxel of 3.0e38, and an int16 copy with scl_slope 1e37."""
    data = base_dataset(tmp_path / "base").parent
    img = nib.load(str(data / "images" / "case_005.nii.gz"))
    vol = np.asarray(img.dataobj).astype(np.float32)
    vol[0, 0, 0] = 3.0e38
    sentinel = save_nifti(tmp_path / "sentinel.nii.gz", vol, img.affine, dtype=np.float32)
    scaled = nib.Nifti1Image(np.asarray(img.dataobj).astype(np.int16), img.affine)
    scaled.header.set_slope_inter(1e37, 0.0)
    nib.save(scaled, str(tmp_path / "slope.nii.gz"))
    return data, sentinel, tmp_path / "slope.nii.gz"


def test_21_a_fill_value_and_a_huge_scl_slope_are_refused_before_any_number_or_write(tmp_path, run_dir):
    data, sentinel, slope = _sentinel_dataset(tmp_path)
    words = {sentinel: "value 3e+38 at voxel (0, 0, 0) is beyond 1e+07 in magnitude, which no CT, MR or PET value "
                       "reaches (a fill value or a scaling error); fix or mask it in the file",
             slope: "is beyond 1e+07 in magnitude, which no CT, MR or PET value reaches (a fill value or a scaling "
                    "error such as scl_slope 1e+37, scl_inter 0); fix or mask it in the file"}
    for scan, expected in words.items():
        assert expected in inspect_image(scan).problems[0]
        result = runner.invoke(app, ["predict", str(data / "images" / "case_005.nii.gz"), str(scan), "--model",
                                     str(run_dir)])
        line = _one_error_line(result)  # no probability printed for the good scan either, no blame on the model
        assert line.startswith(f"error: {scan}: value") and expected in line and "weights" not in line
    for scan in words:  # the same scan among the training cases: refused before the run folder is made
        (data / "images" / scan.name).write_bytes(scan.read_bytes())
        with open(data / "labels.csv", "a", encoding="utf-8") as f:
            f.write(f"images/{scan.name},solid\n")
    for command in ("train", "cv"):
        out = tmp_path / f"out_{command}"
        result = runner.invoke(app, [command, "--data", str(data), "--out", str(out), "--epochs", "1"])
        assert result.exit_code == 2 and "beyond 1e+07 in magnitude" in result.output and not out.exists()


def test_a_value_that_collapses_the_normalised_volume_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    vol = (1.0 + rng.integers(0, 200, size=(16, 16, 16)) * 1e-6).astype(np.float32)  # fine detail near 1.0
    vol[3, 4, 5] = 9e6  # below the magnitude bound, but it dominates the standard deviation
    scan = save_nifti(tmp_path / "collapse.nii.gz", vol, dtype=np.float32)
    problems = inspect_image(scan).problems
    assert len(problems) == 1 and problems[0].startswith("value 9e+06 at voxel (3, 4, 5) dominates the normalisation:")
    assert "its 201 distinct values collapse to 3 after the per-case z-score" in problems[0]
    vol[3, 4, 5] = 1.0  # without it the volume is fine
    assert inspect_image(save_nifti(tmp_path / "fine.nii.gz", vol, dtype=np.float32)).problems == []


def test_plausible_extremes_pass_the_gate(tmp_path):
    ct = lesion("solid", shape=(16, 16, 16), fg=60.0, bg=-1000.0)
    ct[2:4, 2:4, 2:4] = 30000.0  # metal on an extended HU scale
    pet = lesion("solid", shape=(16, 16, 16), fg=2.0e6, bg=5.0e3)  # Bq/mL, a hot bladder
    mask = np.zeros((16, 16, 16), np.float32)
    mask[0, 0, :2] = 1.0  # a few voxels of foreground
    for name, vol in (("ct", ct), ("pet", pet), ("mask", mask)):
        assert inspect_image(save_nifti(tmp_path / f"{name}.nii.gz", vol, dtype=np.float32)).problems == [], name


# --------------------------------------------------------------------------- kind 4: images of one case, one anatomy


def _two_channel_dataset(root: Path, shift_mm: dict[int, float]) -> Path:
    """8 cases with image_t1 and image_t2 (t2 = 0.6 x t1); case k's t2 shifted by shift_mm[k] along x."""
    from helpers_inputs import affine_for

    (root / "images").mkdir(parents=True)
    rows = []
    for i, label in enumerate(["cystic"] * 4 + ["solid"] * 4):
        vol = lesion(label, shape=(16, 16, 16), seed=i)
        affine = affine_for("RAS", (2.0, 2.0, 2.0), (16, 16, 16))
        save_nifti(root / "images" / f"c{i}_t1.nii.gz", vol, affine)
        moved = affine.copy()
        moved[0, 3] += shift_mm.get(i, 0.0)
        save_nifti(root / "images" / f"c{i}_t2.nii.gz", vol * 0.6, moved)
        rows.append({"image_t1": f"images/c{i}_t1.nii.gz", "image_t2": f"images/c{i}_t2.nii.gz", "label": label})
    write_table(root / "labels.csv", rows)
    return root


def test_an_image_that_barely_overlaps_its_case_s_first_image_is_refused(tmp_path):
    data = _two_channel_dataset(tmp_path / "data", {2: 28.8, 5: 12.8})  # 32 mm wide: c2 covers 10 %, c5 60 %
    t2 = data / "images" / "c2_t2.nii.gz"
    expected = (f"{t2}: case c2_t1: covers 10% of the world box of c2_t1.nii.gz, the case's first image (at least 50% "
                "needed): resampled onto its grid this channel would be mostly empty; give images of the same "
                "anatomy, registered to each other")
    result = runner.invoke(app, ["data", "check", "--data", str(data)])
    assert result.exit_code == 2 and expected in result.output and "c5_t2" not in result.output, result.output
    out = tmp_path / "out"
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(out), "--epochs", "1"])
    assert result.exit_code == 2 and expected in result.output and not out.exists()
    from medconvnext.data.inputs import read_prediction_table
    from medconvnext.data.validate import require_valid

    with pytest.raises(UserError, match="covers 10% of the world box of c2_t1.nii.gz"):
        require_valid(read_prediction_table(data / "labels.csv"))


def test_a_latin1_config_or_predictions_table_is_one_line_naming_the_file(tmp_path):
    from medconvnext.results.table import read_predictions

    config = tmp_path / "bad.yaml"
    config.write_bytes("train:\n  epochs: 1  # café\n".encode("latin-1"))
    data = base_dataset(tmp_path / "data").parent
    line = _one_error_line(runner.invoke(app, ["train", "--data", str(data), "--config", str(config),
                                               "--out", str(tmp_path / "out")]))
    assert line == f"error: {config}, line 2: not UTF-8 text (byte 0xe9); save the config as UTF-8"
    table = tmp_path / "predictions.csv"
    table.write_bytes("image,label,prob_a,prob_b\ncafé.nii,a,0.5,0.5\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"predictions.csv: not UTF-8 text \(byte 0xe9 at position 29\)"):
        read_predictions(table)


def test_every_bad_row_of_a_table_is_named_at_once(tmp_path):
    data = base_dataset(tmp_path / "data").parent
    for name in ("case_001.nii.gz", "case_005.nii.gz"):
        (data / "images" / name).unlink()
    line = _one_error_line(runner.invoke(app, ["data", "check", "--data", str(data)]))
    assert line.startswith(f"error: {data / 'labels.csv'}, row 3: image images/case_001.nii.gz not found")
    assert "(and 1 more: row 7: image images/case_005.nii.gz not found" in line


def test_an_analyze_pair_without_its_img_is_refused_and_pairs_in_class_folders_are_one_case(tmp_path):
    vol = lesion("solid", shape=(16, 16, 16)).astype(np.int16)
    for k, label in enumerate(("a", "a", "b", "b")):
        (tmp_path / "data" / label).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Pair(vol + k, np.diag([2.0, 2.0, 2.0, 1.0])), str(tmp_path / "data" / label / f"c{k}.hdr"))
    result = runner.invoke(app, ["data", "check", "--data", str(tmp_path / "data")])
    assert result.exit_code == 0 and "4 cases, 4 usable" in result.output, result.output
    (tmp_path / "data" / "b" / "c3.img").unlink()
    problems = inspect_image(tmp_path / "data" / "b" / "c3.hdr").problems
    assert len(problems) == 1 and problems[0].startswith("its .img pair 'c3.img' not found")
