"""The validation gate: one bad scan among good ones makes train, cv, evaluate and predict stop at once.

Each: exit code 2, one line naming the file and the reason, no traceback, nothing written and nothing deleted.
Validation fails before any training, so every case takes about a second.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bad_inputs import BAD_SCANS, good_dataset, write_bad
from helpers_predict import TINY_CONVNEXT, make_checkpoint
from typer.testing import CliRunner

from medconvnext.cli.main import app
from medconvnext.models import create_model

runner = CliRunner()
TINY = ["--model", "convmixer_128_4", "--set", "model.args.dim=8", "--set", "model.args.depth=1", "--device", "cpu",
        "--epochs", "1", "--batch-size", "4"]
TRAINING_KINDS = [k for k in BAD_SCANS if k != "slice_2d"]  # a 2D image is refused by predict (test below)


def _with_bad_case(root: Path, kind: str) -> tuple[Path, str]:
    good_dataset(root)
    bad, reason = write_bad(root / "img", kind)
    with open(root / "labels.csv", "a", encoding="utf-8") as f:
        f.write(f"img/{bad.name},b\n")
    return bad, reason


def _assert_refused(result, bad: Path, reason: str) -> None:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and str(bad) in lines[0] and reason in lines[0], lines[0]
    assert "Traceback" not in result.output and "unexpected failure" not in result.output


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind", TRAINING_KINDS)
def test_train_refuses_a_bad_case_before_writing(tmp_path, kind):
    bad, reason = _with_bad_case(tmp_path / "data", kind)
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "data"), "--out", str(out), *TINY])
    _assert_refused(result, bad, reason)
    assert not out.exists()


@pytest.mark.parametrize("kind", TRAINING_KINDS)
def test_cv_refuses_a_bad_case_before_writing(tmp_path, kind):
    bad, reason = _with_bad_case(tmp_path / "data", kind)
    out = tmp_path / "cv"
    result = runner.invoke(app, ["cv", "--data", str(tmp_path / "data"), "--folds", "2", "--out", str(out), *TINY])
    _assert_refused(result, bad, reason)
    assert not out.exists()


def test_train_overwrite_with_a_bad_case_deletes_nothing(tmp_path):
    bad, reason = _with_bad_case(tmp_path / "data", "nan_voxel")
    from medconvnext.fileio import atomic_write, start_manifest

    out = tmp_path / "run"
    start_manifest(out, "train")  # a run medconvnext wrote (its manifest lists the files), so --overwrite may go on
    atomic_write(out / "config.yaml", lambda tmp: tmp.write_text("old run\n", encoding="utf-8"))
    atomic_write(out / "checkpoint_best.safetensors", lambda tmp: tmp.write_bytes(b"old weights"))
    before = _snapshot(out)
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "data"), "--out", str(out), "--overwrite", *TINY])
    _assert_refused(result, bad, reason)
    assert _snapshot(out) == before


@pytest.mark.parametrize("kind", list(BAD_SCANS))
def test_predict_refuses_a_bad_scan_and_writes_nothing(tmp_path, kind):
    run = make_checkpoint(tmp_path / "run" / "checkpoint_best.safetensors").parent
    good_dataset(tmp_path / "data", n=2)
    good = tmp_path / "data" / "img" / "c00.nii.gz"
    bad, reason = write_bad(tmp_path / "scans", kind)
    output = tmp_path / "predictions.csv"
    result = runner.invoke(app, ["predict", str(good), str(bad), "--model", str(run), "--output", str(output),
                                 "--cam", str(tmp_path / "cams"), "--device", "cpu"])
    _assert_refused(result, bad, reason)
    assert not output.exists() and not (tmp_path / "cams").exists()


def test_evaluate_refuses_a_bad_case_before_writing(tmp_path):
    run = make_checkpoint(tmp_path / "run" / "checkpoint_best.safetensors", classes=["a", "b"]).parent
    bad, reason = _with_bad_case(tmp_path / "data", "all_zero")
    result = runner.invoke(app, ["evaluate", str(run), "--data", str(tmp_path / "data"), "--split", "all",
                                 "--device", "cpu"])
    _assert_refused(result, bad, reason)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint_best.json", "checkpoint_best.safetensors"]


def test_skip_bad_warns_trains_without_the_case_and_lists_it(tmp_path):
    import json

    bad, _ = _with_bad_case(tmp_path / "data", "one_slice")
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "data"), "--out", str(out), *TINY,
                                 "--set", "data.skip_bad=true"])
    assert result.exit_code == 0, result.output
    warned = [line for line in result.output.splitlines() if "skipped bad case" in line]
    assert len(warned) == 1 and str(bad) in warned[0] and "a single slice" in warned[0]
    dataset = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert "bad_one_slice" not in {c["case_id"] for c in dataset["cases"]} and len(dataset["cases"]) == 8
    assert len(dataset["skipped_bad_cases"]) == 1 and str(bad) in dataset["skipped_bad_cases"][0]


def test_predict_and_evaluate_refuse_nan_probabilities_from_a_diverged_model(tmp_path):
    model = create_model("convnext_atto", num_classes=2, **TINY_CONVNEXT)
    with torch.no_grad():
        model.head.weight.fill_(float("nan"))  # what a diverged training run leaves
    run = make_checkpoint(tmp_path / "run" / "checkpoint_best.safetensors", model=model, classes=["a", "b"]).parent
    data = good_dataset(tmp_path / "data", n=2)
    scan = data / "img" / "c00.nii.gz"
    output = tmp_path / "predictions.csv"
    result = runner.invoke(app, ["predict", str(scan), "--model", str(run), "--output", str(output), "--device", "cpu"])
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]  # after the model's line
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert f"{scan}: the model gave NaN/Inf probabilities" in lines[0] and not output.exists()
    (run / "splits.json").write_text('{"train": [], "val": [], "test": []}', encoding="utf-8")  # for the audit
    (run / "dataset.json").write_text('{"cases": []}', encoding="utf-8")
    result = runner.invoke(app, ["evaluate", str(run), "--data", str(data), "--split", "all", "--device", "cpu"])
    assert result.exit_code == 2 and "c00.nii.gz: the model gave NaN/Inf probabilities" in result.output
    assert not (run / "eval_all").exists()
