"""Reproducers 06, 09, 11 and 13 of issue 15 (``shared/bugs``), rebuilt here with tiny inputs (no shared/ needed).

- 06: an RGB24 NIfTI among the scans: ``data check`` and ``predict`` refuse it in one line naming it (was a
  UFuncTypeError, exit 1).
- 09: one subject in train and val, and a voxel-identical copy of a training scan in val: ``train`` warns in one
  line naming both; ``--strict`` refuses (exit 2) before writing.
- 11: a scan rewritten with other voxels, same size, old mtime restored (``cp -p``, ``rsync -a``): the disk cache
  rebuilds its entry and serves the new voxels.
- 13: a 2D slice and a 4D 3-frame series given to ``predict``: exit 2, one line each, in words.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from bad_inputs import good_dataset, good_volume, write_bad
from conftest import write_volume
from helpers_predict import make_checkpoint
from typer.testing import CliRunner

from medconvnext.cli.main import app
from medconvnext.data.dataset import make_dataset
from medconvnext.data.pipeline import PreprocessingPipeline
from medconvnext.data.preprocessing import PreprocessingPlan

runner = CliRunner()
TINY = ["--model", "convmixer_128_4", "--set", "model.args.dim=8", "--set", "model.args.depth=1", "--device", "cpu",
        "--epochs", "1", "--batch-size", "4"]


def _one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_06_rgb_nifti_is_refused_by_data_check_and_predict(tmp_path):
    data = good_dataset(tmp_path / "data")
    rgb, _ = write_bad(data / "img", "rgb")
    with open(data / "labels.csv", "a", encoding="utf-8") as f:
        f.write(f"img/{rgb.name},b\n")
    result = runner.invoke(app, ["data", "check", "--data", str(data)])
    assert result.exit_code == 2 and "UFuncTypeError" not in result.output
    named = [line for line in result.output.splitlines() if rgb.name in line]
    assert len(named) == 1 and "an RGB image (3 colour components per voxel)" in named[0]
    run = make_checkpoint(tmp_path / "run" / "checkpoint_best.safetensors").parent
    line = _one_error_line(runner.invoke(app, ["predict", str(rgb), "--model", str(run)]))
    assert str(rgb) in line and "an RGB image" in line


def test_09_shared_subject_and_duplicate_image_warn_then_strict_refuses(tmp_path):
    data = tmp_path / "data"
    good_dataset(data, n=10)
    with open(data / "labels.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for k, row in enumerate(rows):
        row["subject"], row["split"] = f"p{k:02d}", "val" if k in (3, 8) else "train"
    rows[4]["subject"] = "p03"  # p03: c03 (val) and c04 (train)
    nib.save(nib.load(data / "img" / "c01.nii.gz"), data / "img" / "dup_copy.nii")  # c01's voxels, uncompressed
    rows.append({"image": "img/dup_copy.nii", "label": rows[1]["label"], "subject": "p99", "split": "val"})
    with open(data / "labels.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "label", "subject", "split"])
        writer.writeheader()
        writer.writerows(rows)
    strict = tmp_path / "strict"
    line = _one_error_line(runner.invoke(app, ["train", "--data", str(data), "--out", str(strict), *TINY, "--strict"]))
    assert "p03 (train c04 / val c03)" in line and "val dup_copy = train c01" in line
    assert not strict.exists()
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    warned = [line for line in result.output.splitlines() if "possible leakage" in line]
    assert len(warned) == 1 and warned[0].startswith("warning:")
    assert "p03 (train c04 / val c03)" in warned[0] and "val dup_copy = train c01" in warned[0]


def test_11_disk_cache_sees_a_rewrite_that_keeps_size_and_mtime(tmp_path):
    pre = PreprocessingPlan(orientation="RAS", spacing=(1.5, 1.5, 2.0), input_size=(16, 16, 16), intensity="none")
    records = []
    for i in range(4):  # uncompressed: scans of one shape and dtype have the same size
        path = write_volume(tmp_path / f"case_{i:03d}.nii", good_volume(i), (1.5, 1.5, 2.0))
        records.append({"image": str(path), "label": i % 2, "case_id": path.stem})
    cache = tmp_path / "cache"
    first = make_dataset(records, PreprocessingPipeline(pre).deterministic(), "disk", cache_dir=cache)
    before = [first[i]["image"] for i in range(4)]
    assert first.misses == 4
    target = Path(records[2]["image"])
    stat = target.stat()
    write_volume(target, good_volume(99), (1.5, 1.5, 2.0))  # other voxels, as `cp -p corrected.nii case_002.nii`
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert target.stat().st_size == stat.st_size and target.stat().st_mtime_ns == stat.st_mtime_ns
    second = make_dataset(records, PreprocessingPipeline(pre).deterministic(), "disk", cache_dir=cache)
    after = [second[i]["image"] for i in range(4)]
    assert (second.hits, second.misses) == (3, 1)
    assert not torch.equal(after[2], before[2]) and all(torch.equal(after[i], before[i]) for i in (0, 1, 3))
    expected = torch.from_numpy(np.asarray(nib.load(target).dataobj, dtype=np.float32))
    torch.testing.assert_close(after[2][0], expected)  # the new voxels (same grid, no intensity change)
    assert len(list(cache.glob("*/*.pt"))) == 5  # one more entry than before


def test_13_2d_slice_and_4d_series_are_refused_by_predict(tmp_path):
    run = make_checkpoint(tmp_path / "run" / "checkpoint_best.safetensors").parent
    for kind, words in (("slice_2d", "a 2D image (shape (16, 16)); expected a 3D volume"),
                        ("series_4d", "a 4D series of 3 frames (shape (16, 16, 16, 3)); expected a 3D volume")):
        scan, _ = write_bad(tmp_path, kind)
        line = _one_error_line(runner.invoke(app, ["predict", str(scan), "--model", str(run)]))
        assert line == f"error: {scan}: {words}"
