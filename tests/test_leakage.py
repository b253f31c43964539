"""Leakage audit: shared subjects and identical images between training and evaluation cases."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import blob_volume, write_volume
from typer.testing import CliRunner

from medconvnext.cli.main import app
from medconvnext.data import leakage
from medconvnext.data.datalist import load_datalist
from medconvnext.data.leakage import LeakageWarning, audit_run, audit_split, enforce, image_hash
from medconvnext.data.splits import train_val_split
from medconvnext.errors import UserError

runner = CliRunner()
TINY_CONVMIXER = ["--model", "convmixer_128_4", "--set", "model.args.dim=16", "--set", "model.args.depth=1",
                  "--device", "cpu", "--batch-size", "4"]


@pytest.fixture(autouse=True)
def hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDCONVNEXT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(leakage, "_memo", {})
    return tmp_path / "cache"


def _rewrite(dataset: Path, splits: dict[str, str], extra: list[dict] = ()) -> None:
    """labels.csv with a split column (``splits``: case id -> split, default train) and ``extra`` rows."""
    path = dataset / "labels.csv"
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["split"] = splits.get(Path(row["image"]).name.removesuffix(".nii.gz"), "train")
    rows += list(extra)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "label", "subject", "split"])
        writer.writeheader()
        writer.writerows(rows)


def _plant_duplicates(dataset: Path) -> None:
    """c00 copied byte for byte as dup; c02's voxels re-saved uncompressed with another header as c02_resaved."""
    shutil.copy(dataset / "img" / "c00.nii.gz", dataset / "img" / "dup.nii.gz")
    image = nib.load(dataset / "img" / "c02.nii.gz")
    copy = nib.Nifti1Image(image.get_fdata(dtype="float32"), image.affine * 1.1)  # other spacing, same voxels
    copy.header["descrip"] = b"anonymised"
    nib.save(copy, dataset / "img" / "c02_resaved.nii")
    _rewrite(dataset, {"c03": "val"}, [
        {"image": "img/dup.nii.gz", "label": "normal", "subject": "x1", "split": "val"},
        {"image": "img/c02_resaved.nii", "label": "normal", "subject": "x2", "split": "test"},
    ])


def test_planted_duplicate_images_are_found(csv_dataset):
    _plant_duplicates(csv_dataset)
    datalist = load_datalist(csv_dataset)
    report = audit_split(datalist, train_val_split(datalist, 0.2, seed=0))
    assert report.cases("image") == {"dup", "c02_resaved"}
    assert report.cases("subject") == {"c03"}  # c03 shares subject s1 with c02 (train)
    message = report.message()
    assert "\n" not in message
    assert "val dup = train c00" in message and "test c02_resaved = train c02" in message
    assert "s1 (train c02 / val c03)" in message
    with pytest.warns(LeakageWarning, match="identical image"):
        enforce(report, "warn")
    with pytest.raises(UserError, match="refused because of --strict"):
        enforce(report, "error")
    enforce(report, "off")


def test_clean_split_has_no_findings(csv_dataset):
    _rewrite(csv_dataset, {"c04": "val", "c05": "val", "c10": "test", "c11": "test"})  # whole subjects s2, s5
    datalist = load_datalist(csv_dataset)
    report = audit_split(datalist, train_val_split(datalist, 0.2, seed=0))
    assert not report and report.hashed == 12 and not report.unreadable


def test_hashes_are_cached_by_content_and_never_stale(csv_dataset, hash_cache, monkeypatch):
    path = csv_dataset / "img" / "c00.nii"  # uncompressed: a rewrite with other voxels keeps the size
    nib.save(nib.load(csv_dataset / "img" / "c00.nii.gz"), path)
    first = image_hash(path)
    assert (hash_cache / "image_hashes.json").is_file()
    monkeypatch.setattr(leakage, "_memo", {})
    decoded = []
    real = leakage._hash_voxels
    monkeypatch.setattr(leakage, "_hash_voxels", lambda p: decoded.append(p) or real(p))
    assert image_hash(path) == first and decoded == []  # from the cache file
    path.write_bytes(path.read_bytes())  # same bytes, new mtime: the content digest says nothing changed
    assert image_hash(path) == first and decoded == []
    # other voxels, same size, the old mtime restored (cp -p, rsync -a): decoded again, a new hash
    stat = path.stat()
    image = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[::-1].copy(), image.affine, image.header), path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    second = image_hash(path)
    assert len(decoded) == 1 and second not in (None, first)


def test_train_warns_in_one_line_and_strict_refuses(csv_dataset, tmp_path):
    _plant_duplicates(csv_dataset)
    out = tmp_path / "strict"
    result = runner.invoke(app, ["train", "--data", str(csv_dataset), "--out", str(out), "--epochs", "1",
                                 *TINY_CONVMIXER, "--strict"])
    assert result.exit_code == 2, result.output
    assert "possible leakage" in result.output and "dup = train c00" in result.output
    assert not out.exists()
    out = tmp_path / "warned"
    result = runner.invoke(app, ["train", "--data", str(csv_dataset), "--out", str(out), "--epochs", "1",
                                 *TINY_CONVMIXER])
    assert result.exit_code == 0, result.output
    warning = [line for line in result.output.splitlines() if "possible leakage" in line]
    assert len(warning) == 1 and warning[0].startswith("warning:")
    # the function the predict command can call: scans against the cases that trained or selected the model
    shutil.copy(csv_dataset / "img" / "c00.nii.gz", tmp_path / "scan_a.nii.gz")
    write_volume(tmp_path / "scan_b.nii.gz", blob_volume(np.random.default_rng(7), True))
    found = audit_run(out, [tmp_path / "scan_a.nii.gz", tmp_path / "scan_b.nii.gz", csv_dataset / "img" / "c03.nii.gz"])
    assert found.cases("image") == {"scan_a", "c03"}  # c03 is a validation case of the run
    # the message names the split of the run's case: a validation case is not called a training case
    splits = json.loads((out / "splits.json").read_text(encoding="utf-8"))
    assert "c03" in splits["val"]
    role_c00 = "val" if "c00" in splits["val"] else "train"
    assert "c03 (the run's own val case)" in found.message()  # the very case it selected on
    assert f"evaluated scan_a = {role_c00} c00" in found.message()
    # and predict itself: a warning by default, a refusal with --strict
    result = runner.invoke(app, ["predict", str(tmp_path / "scan_a.nii.gz"), str(tmp_path / "scan_b.nii.gz"),
                                 "--model", str(out), "--device", "cpu"])
    assert result.exit_code == 0 and "possible leakage" in result.output and "scan_a" in result.output
    result = runner.invoke(app, ["predict", str(tmp_path / "scan_b.nii.gz"), "--model", str(out), "--device", "cpu"])
    assert result.exit_code == 0 and "possible leakage" not in result.output
    result = runner.invoke(app, ["predict", str(tmp_path / "scan_a.nii.gz"), "--model", str(out), "--strict"])
    assert result.exit_code == 2 and "possible leakage" in result.output
    # an ensemble of runs: each finding names the run whose case it matches
    result = runner.invoke(app, ["predict", str(tmp_path / "scan_a.nii.gz"), "--model", str(out),
                                 "--model", str(out / "checkpoint_best.safetensors"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert f"predicted scan_a = warned {role_c00} c00" in " ".join(result.output.split())


def test_findings_of_an_ensemble_name_their_run():
    """With several runs audited together (predict/evaluate of an ensemble), each finding names its run."""
    from medconvnext.data.leakage import Finding, _item

    own = Finding("image", "c03", "c03", "evaluated", "ab12", train_side="val", run="run_b")
    other = Finding("image", "c02", "c07", "val", "ab12", run="run_b")
    subject = Finding("subject", "c06", "c07", "val", "s3", run="run_b")
    assert _item(own) == "c03 (run_b's own val case)"
    assert _item(other) == "val c07 = run_b train c02"
    assert _item(subject) == "s3 (run_b train c06 / val c07)"
    assert _item(Finding("image", "c03", "c03", "val", "ab12", train_side="val")) == "c03 (the run's own val case)"


def test_validation_hands_its_voxel_hashes_to_the_audit(tmp_path, monkeypatch):
    """The data checks decode every voxel; the audit that follows (in this process or the next) decodes nothing,
    and the hash is the audit's own, the same for a NIfTI file and an MHA file of the same voxels."""
    import SimpleITK as sitk

    from medconvnext.data import validate

    volume = (blob_volume(np.random.default_rng(3), True) * 100).astype(np.int16)
    nifti, mha = tmp_path / "a.nii.gz", tmp_path / "b.mha"
    write_volume(nifti, volume)
    sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(nib.load(nifti).dataobj).T)), str(mha))
    reads = []
    real = leakage.read_voxels
    monkeypatch.setattr(leakage, "read_voxels", lambda path: reads.append(path) or real(path))
    expected = {str(p.resolve()): leakage._hash_voxels(p) for p in (nifti, mha)}
    assert len(set(expected.values())) == 1 and len(reads) == 2
    reads.clear()
    assert all(not r.problems for r in validate.inspect_images([nifti, mha]))
    assert leakage.image_hashes([nifti, mha]) == expected and reads == []
    monkeypatch.setattr(leakage, "_memo", {})  # a new process: from the hash cache on disk
    assert leakage.image_hashes([nifti, mha]) == expected and reads == []
