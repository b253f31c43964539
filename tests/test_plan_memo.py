"""The plan's foreground scan is remembered by file content: a warm plan reads no voxels and equals the cold one."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch
from conftest import REPO
from typer.testing import CliRunner

from medconvnext.cli.main import app
from medconvnext.config import PreprocessingConfig
from medconvnext.data import foreground_memo, io, validate
from medconvnext.data.datalist import Case
from medconvnext.data.fingerprint import compute_fingerprint, plan_preprocessing, scan_foreground
from medconvnext.data.synthetic import chest_ct, save_phantom
from medconvnext.data.transforms import LoadCaseImaged

torch.set_num_threads(1)
SHAPE, SPACING = (96, 96, 32), (4.0, 4.0, 8.0)
CT = PreprocessingConfig(modality="ct", max_input_voxels=32 ** 3)


@pytest.fixture
def memo(tmp_path, monkeypatch):
    """A cold memo folder of this test's own, and a list that receives every scan the loader reads."""
    monkeypatch.setenv("MEDCONVNEXT_CACHE_DIR", str(tmp_path / "memo"))
    reads: list[str] = []
    load = LoadCaseImaged.load

    def counted(self, path):
        reads.append(os.path.basename(str(path)))
        return load(self, path)

    monkeypatch.setattr(LoadCaseImaged, "load", counted)
    return reads


def _cases(folder, count=3) -> list[Case]:
    cases = []
    for i in range(count):
        path = folder / f"ct{i}.nii.gz"
        save_phantom(chest_ct(SHAPE, SPACING, nodule=bool(i % 2), seed=i), str(path))
        cases.append(Case(f"ct{i}", (str(path),), "nodule" if i % 2 else "clear"))
    return cases


def _plan(cases):
    return plan_preprocessing(CT, compute_fingerprint(cases), (8, 8, 8))


def test_warm_plan_reads_no_voxels_and_is_bit_identical(tmp_path, memo):
    cases = _cases(tmp_path)
    cold = _plan(cases)
    assert sorted(memo) == ["ct0.nii.gz", "ct1.nii.gz", "ct2.nii.gz"]  # one read per case
    assert len(list((tmp_path / "memo" / foreground_memo.MEMO_FOLDER).glob("*.npz"))) == 3
    memo.clear()
    warm = _plan(cases)
    assert memo == []
    assert warm.to_dict() == cold.to_dict() and warm.clip == cold.clip and warm.mean == cold.mean
    scans = [scan_foreground([c.images for c in cases][i:], "RAS", "body", True) for i in (0, 1)]
    assert memo == []
    # a case's samples do not depend on the cases planned with it (a cv fold reuses them as they are)
    assert all(np.array_equal(a, b) for a, b in zip(scans[0].samples[1:], scans[1].samples, strict=True))
    assert np.array_equal(scans[0].extents[1:], scans[1].extents)


def test_rewritten_scan_is_read_again_and_other_settings_have_their_own_entry(tmp_path, memo):
    cases = _cases(tmp_path)
    time.sleep(2.1)  # past the digest memo's racy window: the old digest is remembered, as in real use
    before = _plan(cases)
    memo.clear()
    bigger = chest_ct((128, 96, 32), SPACING, nodule=True, seed=7)  # new content: a wider field, other values
    save_phantom(bigger, cases[0].images[0])
    after = _plan(cases)
    assert memo == ["ct0.nii.gz"]  # only the edited file
    assert after.to_dict() != before.to_dict()
    memo.clear()
    scan_foreground([c.images for c in cases], "LPS", "body", True)
    assert sorted(memo) == ["ct0.nii.gz", "ct1.nii.gz", "ct2.nii.gz"]  # another orientation: not the RAS entries
    memo.clear()
    scan_foreground([c.images for c in cases], "RAS", "body", True, seed=1)
    assert len(memo) == 3


@pytest.mark.parametrize("damage", ["garbage", "shape", "key", "nan"])
def test_a_damaged_entry_is_ignored_and_rebuilt(tmp_path, memo, damage):
    cases = _cases(tmp_path, 1)
    cold = scan_foreground([cases[0].images], "RAS", "body", True)
    (entry,) = (tmp_path / "memo" / foreground_memo.MEMO_FOLDER).glob("*.npz")
    if damage == "garbage":
        entry.write_bytes(b"PK\x03\x04 not a zip")
    else:
        extent, samples = cold.extents[0], cold.samples[0]
        values = {"key": np.array(entry.stem), "extent": extent, "samples": samples}
        if damage == "shape":
            values["extent"] = np.append(extent, 1.0)
        elif damage == "key":
            values["key"] = np.array("0" * 32)
        else:
            values["samples"] = np.full_like(samples, np.nan)
        with open(entry, "wb") as f:
            np.savez(f, **values)
    memo.clear()
    again = scan_foreground([cases[0].images], "RAS", "body", True)
    assert memo == ["ct0.nii.gz"]  # read again, not trusted
    assert np.array_equal(again.extents, cold.extents) and np.array_equal(again.samples[0], cold.samples[0])
    memo.clear()
    scan_foreground([cases[0].images], "RAS", "body", True)
    assert memo == []  # the rebuilt entry serves


def test_a_read_only_memo_folder_costs_reads_not_a_failure(tmp_path, memo):
    cases = _cases(tmp_path, 1)
    folder = tmp_path / "memo"
    folder.mkdir()
    (folder / foreground_memo.MEMO_FOLDER).write_text("a file where the memo folder would be")
    first = scan_foreground([cases[0].images], "RAS", "body", True)
    second = scan_foreground([cases[0].images], "RAS", "body", True)
    assert memo == ["ct0.nii.gz", "ct0.nii.gz"]
    assert np.array_equal(first.samples[0], second.samples[0])


def test_a_second_data_check_reads_no_voxels(tmp_path, memo, monkeypatch):
    """The gate's results and the plan's foreground scan are both remembered: the second run reads nothing."""
    (tmp_path / "data").mkdir()
    cases = _cases(tmp_path / "data", 4)
    (tmp_path / "data" / "labels.csv").write_text(
        "image,label\n" + "".join(f"{c.images[0]},{c.label}\n" for c in cases), encoding="utf-8")
    opener = io.open_image

    def counted_open(path):
        opened = opener(path)

        def read():
            memo.append(f"gate:{os.path.basename(str(path))}")
            return opened.load()

        return io.OpenImage(opened.shape, opened.affine, read)

    monkeypatch.setattr(validate, "open_image", counted_open)
    command = ["data", "check", "--data", str(tmp_path / "data"), "--config", str(REPO / "configs" / "ct.yaml")]
    first = CliRunner().invoke(app, command)
    assert first.exit_code == 0, first.output
    gate = [r for r in memo if r.startswith("gate:")]
    plan = [r for r in memo if not r.startswith("gate:")]
    assert len(gate) == 4 and 0 < len(plan) == len(set(plan))  # cold: each scan, and each training scan
    memo.clear()
    second = CliRunner().invoke(app, command)
    assert second.exit_code == 0 and second.output == first.output
    assert memo == []
