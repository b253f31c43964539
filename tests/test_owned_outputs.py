"""Outputs never replace a file medconvnext did not write; the README's first commands work on their own run."""

from __future__ import annotations

import shutil

from conftest import SAMPLE_DATA, one_line
from typer.testing import CliRunner

from medconvnext.cli.main import app

runner = CliRunner()
TINY = ["--model", "convmixer_128_4", "--set", "model.args.dim=8", "--set", "model.args.depth=1", "--device", "cpu",
        "--epochs", "1"]


def test_readme_first_command_then_report_and_threshold_auto(tmp_path):
    """README: train, then ``predict --output runs/lesions/predictions.csv`` into the run; ``report`` (which predict
    recommends) and ``predict --threshold auto`` must still work on that run."""
    run = tmp_path / "runs" / "lesions"
    scan = str(SAMPLE_DATA / "images" / "case_000.nii.gz")
    assert runner.invoke(app, ["train", "--data", str(SAMPLE_DATA), "--out", str(run), *TINY]).exit_code == 0
    first = runner.invoke(app, ["predict", scan, "--model", str(run), "--output", str(run / "predictions.csv"),
                                "--device", "cpu"])
    assert first.exit_code == 0, first.output
    report = runner.invoke(app, ["report", str(run), "--n-boot", "20"])
    assert report.exit_code == 0, report.output
    auto = runner.invoke(app, ["predict", scan, "--model", str(run), "--threshold", "auto", "--device", "cpu",
                               "--output", str(run / "predictions.csv")])  # its own earlier file: replaced
    assert auto.exit_code == 0, auto.output
    assert "P(" in auto.output and "wrote" in auto.output
    # 12 validation cases: no temperature is fitted, and both report and predict say why (no 0/1 probabilities)
    assert "calibration: not fitted: " in " ".join(report.output.split())
    assert "calibration: temperature not fitted: " in " ".join(auto.output.split())


def test_predict_output_onto_a_file_it_did_not_write_refuses(tmp_path):
    from helpers_predict import make_checkpoint

    model = make_checkpoint(tmp_path / "run" / "checkpoint_best.safetensors", classes=["cystic", "solid"]).parent
    data = tmp_path / "data"
    shutil.copytree(SAMPLE_DATA, data)
    labels = data / "labels.csv"
    before = labels.read_bytes()
    scan = str(data / "images" / "case_000.nii.gz")
    refused = runner.invoke(app, ["predict", scan, "--model", str(model), "--output", str(labels), "--device", "cpu"])
    assert refused.exit_code == 2
    assert "labels.csv: exists, and medconvnext cannot tell that it wrote it" in one_line(refused.output)
    assert labels.read_bytes() == before
    forced = runner.invoke(app, ["predict", scan, "--model", str(model), "--output", str(labels), "--device", "cpu",
                                 "--overwrite"])
    assert forced.exit_code == 0, forced.output
    assert labels.read_bytes() != before


def test_report_and_export_never_replace_a_users_file(tmp_path):
    run = tmp_path / "run"
    assert runner.invoke(app, ["train", "--data", str(SAMPLE_DATA), "--out", str(run), *TINY]).exit_code == 0
    assert runner.invoke(app, ["report", str(run), "--n-boot", "0"]).exit_code == 0
    assert runner.invoke(app, ["report", str(run), "--n-boot", "0"]).exit_code == 0  # its own files: replaced
    (run / "report.md").write_text("my edited report\n", encoding="utf-8")
    refused = runner.invoke(app, ["report", str(run), "--n-boot", "0"])
    assert refused.exit_code == 2 and "report.md: exists, and medconvnext cannot tell that it wrote it" in one_line(
        refused.output)
    assert (run / "report.md").read_text(encoding="utf-8") == "my edited report\n"
    mine = tmp_path / "deploy" / "model.pt"
    mine.parent.mkdir()
    mine.write_bytes(b"my model")
    export = runner.invoke(app, ["export", str(run), "--out", str(mine)])
    assert export.exit_code == 2
    assert "model.pt: exists, and medconvnext cannot tell that it wrote it" in one_line(export.output)
    assert mine.read_bytes() == b"my model"


def test_saliency_maps_never_replace_a_users_file_and_replace_their_own(tmp_path):
    from helpers_predict import make_checkpoint

    model = make_checkpoint(tmp_path / "run" / "checkpoint_best.safetensors").parent
    scan = str(SAMPLE_DATA / "images" / "case_002.nii.gz")
    mine = tmp_path / "figures"
    mine.mkdir()
    (mine / "case_002_cam.nii.gz").write_bytes(b"my own map")
    args = ["predict", scan, "--model", str(model), "--device", "cpu", "--cam-method", "occlusion", "--cam"]
    refused = runner.invoke(app, [*args, str(mine)])
    assert refused.exit_code == 2
    assert "case_002_cam.nii.gz: exists, and medconvnext cannot tell that it wrote it" in one_line(refused.output)
    assert (mine / "case_002_cam.nii.gz").read_bytes() == b"my own map"
    cams = tmp_path / "cams"
    assert runner.invoke(app, [*args, str(cams)]).exit_code == 0
    again = runner.invoke(app, [*args, str(cams)])  # its own maps (the folder's manifest): replaced
    assert again.exit_code == 0, again.output
