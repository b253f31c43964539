"""The reproducers 16-24 of ``../shared/bugs/`` (issue 31) run as their authors wrote them: each script builds its
input into a temporary folder, and the command its docstring names behaves as the docstring says. Skipped when
``../shared`` is absent (the same cases are rebuilt inside the repository by test_input_integrity.py,
test_dicom_values.py, test_loader_seeding.py and test_fuzz_reader.py); nothing from shared/ is copied here.
Reproducer 18 (loader workers) runs whole training runs: tests/test_loader_seeding.py is its test."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from helpers_predict import make_checkpoint
from typer.testing import CliRunner

from medconvnext.cli.main import app

BUGS = REPO.parent / "shared" / "bugs"
pytestmark = pytest.mark.skipif(not BUGS.is_dir(), reason="../shared/bugs is absent")
runner = CliRunner()


def _build(number: str, out: Path, *args: str) -> None:
    script = next(BUGS.glob(f"{number}_*.py"))
    done = subprocess.run([sys.executable, str(script), str(out), *args], cwd=BUGS, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


def _intensity(output: str) -> dict[str, float]:
    line = next(line for line in output.splitlines() if line.startswith("intensity (median over cases)"))
    return {k: float(v) for k, v in re.findall(r"(p[\d.]+) (-?[\d.e+]+)", line)}


def test_16_per_slice_rescale_gives_float_activities(tmp_path):
    _build("16", tmp_path)
    result = runner.invoke(app, ["data", "check", "--data", str(tmp_path / "petdata")])
    assert result.exit_code == 0, result.output
    values = _intensity(result.output)
    assert values["p50"] == pytest.approx(0.5, abs=0.1) and values["p99.5"] == pytest.approx(4.3, abs=0.15)


def test_19_labels_00_and_0_are_refused(tmp_path):
    _build("19", tmp_path)
    result = runner.invoke(app, ["data", "check", "--data", str(tmp_path / "data")])
    assert result.exit_code == 2 and "labels '0' (row 2) and '00' (row 3) are the same number" in result.output


def test_20_a_blank_raw_under_an_unchanged_mhd_is_refused(tmp_path):
    _build("20", tmp_path)
    run = make_checkpoint(tmp_path / "run1" / "checkpoint_best.safetensors").parent
    assert runner.invoke(app, ["data", "check", "--data", str(tmp_path / "data")]).exit_code == 0
    _build("20", tmp_path, "rewrite")
    blank = tmp_path / "data" / "images" / "case_004.mhd"
    result = runner.invoke(app, ["data", "check", "--data", str(tmp_path / "data")])
    assert result.exit_code == 2 and f"{blank}: every voxel equals 0 (an empty or blank volume)" in result.output
    result = runner.invoke(app, ["predict", str(blank), "--model", str(run)])
    assert result.exit_code == 2 and "every voxel equals 0" in result.output
    _build("20", tmp_path, "fresh")
    result = runner.invoke(app, ["predict", str(tmp_path / "fresh" / "blank.mhd"), "--model", str(run)])
    assert result.exit_code == 2 and "every voxel equals 0" in result.output and "leakage" not in result.output


def test_21_a_fill_value_is_refused_by_predict(tmp_path):
    _build("21", tmp_path)
    run = make_checkpoint(tmp_path / "run" / "checkpoint_best.safetensors").parent
    result = runner.invoke(app, ["predict", str(tmp_path / "base/images/case_005.nii.gz"),
                                 str(tmp_path / "sentinel.nii.gz"), "--model", str(run)])
    assert result.exit_code == 2 and "sentinel.nii.gz: value 3e+38 at voxel (0, 0, 0)" in result.output


def test_22_two_echoes_in_one_series_are_refused(tmp_path):
    _build("22", tmp_path)
    result = runner.invoke(app, ["data", "check", "--data", str(tmp_path / "mrdata")])
    assert result.exit_code == 2 and f"{tmp_path / 'mrdata/solid/case_me'}: two slices at one position" in result.output


def test_23_dicom_without_dcm_suffix_is_read(tmp_path):
    _build("23", tmp_path)
    result = runner.invoke(app, ["data", "check", "--data", str(tmp_path / "dicomdata")])
    assert result.exit_code == 0 and "8 cases, 8 usable" in result.output, result.output


def test_24_uint16_above_32767_stays_positive(tmp_path):
    _build("24", tmp_path)
    result = runner.invoke(app, ["data", "check", "--data", str(tmp_path / "u16data")])
    assert result.exit_code == 0, result.output
    values = _intensity(result.output)
    assert values["p0.5"] > 19000 and values["p50"] == pytest.approx(20000, abs=100) and values["p99.5"] > 49000
