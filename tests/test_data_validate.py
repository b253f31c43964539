"""Bad input: each problem is found and named, before any huge allocation."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest
from bad_inputs import write_raw_nifti
from conftest import write_volume

from medconvnext.data.datalist import Case, load_datalist
from medconvnext.data.validate import inspect_image, validate_case, validate_datalist
from medconvnext.errors import UserError


def good() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(6, 6, 6)).astype(np.float32)


def nan_volume() -> np.ndarray:
    data = good()
    data[1, 2, 3] = np.nan
    data[0, 0, 0] = np.inf
    return data


@pytest.mark.parametrize(
    ("data", "spacing", "message"),
    [
        (np.zeros((6, 6, 6, 3), np.float32), (1, 1, 1), "a 4D series of 3 frames"),
        (nan_volume(), (1, 1, 1), "2 NaN/Inf voxel"),
        (np.zeros((6, 6, 6), np.float32), (1, 1, 1), "every voxel equals 0.0"),
        (good(), (1, 0, 1), "zero or negative spacing"),
        (good(), (1, 1, -2), "zero or negative spacing"),
    ],
)
def test_bad_volumes_are_named(tmp_path, data, spacing, message):
    path = write_raw_nifti(tmp_path / "bad.nii.gz", data, spacing)
    problems = validate_case(Case("bad", (str(path),), "a"))
    assert len(problems) == 1 and str(path) in problems[0] and message in problems[0]


def test_good_volume_and_channels_are_accepted(tmp_path):
    path = write_volume(tmp_path / "ok.nii.gz", good(), (0.8, 0.8, 3.0))
    report = inspect_image(path)
    assert report.problems == [] and report.shape == (6, 6, 6) and report.spacing == (0.8, 0.8, 3.0)
    assert report.orientation == "RAS" and len(report.percentiles) == 3
    channels = write_volume(tmp_path / "rgb.nii.gz", np.random.rand(6, 6, 6, 1, 2).astype(np.float32))
    assert inspect_image(channels).problems == [] and inspect_image(channels).channels == 2


def test_corrupt_and_truncated_files(tmp_path):
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"this is not a nifti file at all")
    assert "unreadable" in inspect_image(garbage).problems[0]
    full = write_volume(tmp_path / "full.nii.gz", np.random.rand(30, 30, 30).astype(np.float32))
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    assert "truncated or corrupt" in inspect_image(truncated).problems[0]
    missing = inspect_image(tmp_path / "nope.nii.gz").problems[0]
    assert "no such file" in missing


def test_header_claiming_a_huge_volume_is_rejected_before_reading(tmp_path):
    header = nib.Nifti1Header()
    header.set_data_shape((5000, 5000, 5000))
    header.set_data_dtype(np.uint8)
    header.set_qform(np.eye(4), code=1)
    path = tmp_path / "huge.nii.gz"
    with gzip.open(path, "wb") as f:
        f.write(header.binaryblock + b"\0" * 4 + b"\0" * 64)  # a few bytes of "voxels"
    assert "implausible size" in inspect_image(path).problems[0]
    small = tmp_path / "small.nii.gz"
    write_volume(small, np.random.rand(20, 20, 20).astype(np.float32))
    assert "more than the limit" in inspect_image(small, max_voxels=1000).problems[0]


def test_label_only_in_val_and_json_datalist(tmp_path):
    for i in range(5):
        write_volume(tmp_path / f"c{i}.nii.gz", good())
    (tmp_path / "labels.csv").write_text("image,label,split\nc0.nii.gz,a,train\nc1.nii.gz,b,train\nc2.nii.gz,z,val\n",
                                         encoding="utf-8")
    with pytest.raises(UserError, match="label 'z', which no training case has"):
        load_datalist(tmp_path)
    (tmp_path / "labels.csv").unlink()
    entries = {
        "training": [{"image": "c0.nii.gz", "label": 0}, {"image": "c1.nii.gz", "label": [1]}],
        "validation": [{"image": "c2.nii.gz", "label": 1}],
        "test": [{"image": "c3.nii.gz"}],
    }
    (tmp_path / "datalist.json").write_text(json.dumps(entries), encoding="utf-8")
    datalist = load_datalist(tmp_path)
    assert datalist.classes == ["0", "1"]
    assert [(c.case_id, c.label, c.split) for c in datalist.cases] == [
        ("c0", "0", "train"), ("c1", "1", "train"), ("c2", "1", "val"), ("c3", None, "test")
    ]
    entries["training"][0]["image"] = "missing.nii.gz"
    (tmp_path / "datalist.json").write_text(json.dumps(entries), encoding="utf-8")
    with pytest.raises(UserError, match=r"training\[0\]: image missing.nii.gz not found"):
        load_datalist(tmp_path)


def test_validate_datalist_raises_or_skips(tmp_path):
    lines = ["image,label"]
    for i in range(4):
        write_volume(tmp_path / f"c{i}.nii.gz", good() if i else np.zeros((4, 4, 4), np.float32))
        lines.append(f"c{i}.nii.gz,{'ab'[i % 2]}")
    (tmp_path / "labels.csv").write_text("\n".join(lines), encoding="utf-8")
    datalist = load_datalist(tmp_path)
    with pytest.raises(UserError, match="c0.nii.gz: every voxel equals"):
        validate_datalist(datalist)
    kept, problems = validate_datalist(datalist, skip_bad=True)
    assert [c.case_id for c in kept.cases] == ["c1", "c2", "c3"] and len(problems) == 1
    assert kept.extra["skipped"] == problems
