"""The operating point used with --tta is fitted on held-out predictions made with TTA, by tiny real runs.

A train run writes ``val_predictions_tta.csv`` (its best checkpoint, 8 flips) after its last epoch; ``report``
fits the ``tta`` section of ``calibration.json`` on it; ``predict --tta`` and ``evaluate --tta`` use that section.
Runs without it (trained before) keep the plain operating point and a note that says how to get one.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_dataset
from test_resume import StopAfter
from typer.testing import CliRunner

from medconvnext.cli.main import app
from medconvnext.engine.inference import Predictor
from medconvnext.engine.trainer import resume, train
from medconvnext.reports.run import report_run
from medconvnext.results.calibration import (
    apply_temperature,
    choose_threshold,
    load_calibration,
    save_calibration,
)
from medconvnext.results.table import read_predictions

runner = CliRunner()
TINY = ["--model", "convmixer_128_4", "--set", "model.args.dim=16", "--set", "model.args.depth=1", "--device", "cpu",
        "--batch-size", "4"]
NOTE = "without test-time augmentation"


def _read(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _flat(text: str) -> str:
    return " ".join(text.split())


def _tta_probs(run: Path, images: list[str]) -> np.ndarray:
    """What `predict --tta` gives for ``images`` with the run's best checkpoint, uncalibrated."""
    return Predictor.load(run / "checkpoint_best.safetensors", device="cpu", tta=True).predict_files(images)


def _case_paths(data: Path, run: Path, table: Path) -> list[str]:
    """The scan of every row of a validation table (its ``image`` column holds case ids)."""
    by_id = {c["case_id"]: c["images"][0] for c in json.loads((run / "dataset.json").read_text("utf-8"))["cases"]}
    return [str(Path(by_id[r["image"]])) for r in _read(table)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tta")
    data = make_dataset(root / "data", n=24, test=2)
    run = root / "run"
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(run), "--epochs", "2",
                                 "--set", "data.val_fraction=0.4", *TINY])
    assert result.exit_code == 0, result.output
    return {"data": data, "run": run, "root": root,
            "scans": [str(data / "img" / f"c{i:02d}.nii.gz") for i in range(20, 24)]}


def test_a_trained_run_has_the_tta_predictions_of_its_best_checkpoint(trained):
    run = trained["run"]
    plain, tta = _read(run / "val_predictions.csv"), _read(run / "val_predictions_tta.csv")
    assert list(tta[0]) == list(plain[0])  # the same layout
    assert sorted((r["image"], r["label"]) for r in tta) == sorted((r["image"], r["label"]) for r in plain)
    splits = json.loads((run / "splits.json").read_text(encoding="utf-8"))
    assert sorted(r["image"] for r in tta) == sorted(splits["val"])
    expected = _tta_probs(run, _case_paths(trained["data"], run, run / "val_predictions_tta.csv"))
    got = np.array([[float(r["prob_benign"]), float(r["prob_malignant"])] for r in tta])
    np.testing.assert_allclose(got, expected, atol=2e-6)  # the table keeps 6 decimals
    by_image = {r["image"]: float(r["prob_malignant"]) for r in plain}
    assert not np.allclose(got[:, 1], [by_image[r["image"]] for r in tta], atol=1e-4)  # the flips do matter
    assert not list(run.glob("*.tmp"))


def test_report_fits_the_tta_section_on_the_tta_predictions(trained):
    run = trained["run"]
    report_run(run, n_boot=0, target_sensitivity=0.75)
    stored = json.loads((run / "calibration.json").read_text(encoding="utf-8"))
    table = read_predictions(run / "val_predictions_tta.csv")
    t = 1.0  # too few validation cases to fit a temperature
    point = choose_threshold(table.y_true == 1, apply_temperature(table.probs, t)[:, 1], 0.75)
    section = stored["tta"]
    assert section["temperature"] == t and section["temperature_note"].startswith("not fitted")
    assert section["threshold"] == pytest.approx(point.threshold)
    assert section["criterion"] == stored["criterion"] == "sensitivity>=0.75"  # the same target for both
    assert (section["sensitivity"], section["specificity"]) == pytest.approx((point.sensitivity, point.specificity))
    assert "test-time augmentation" in section["fitted_on"] and "test-time" not in stored["fitted_on"]
    assert stored["temperature"] == 1.0 and not stored["temperature_applied"]
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert summary["calibration"]["tta"] == section
    assert "With test-time augmentation" in _flat((run / "report.md").read_text(encoding="utf-8"))
    shown = runner.invoke(app, ["report", str(run), "--n-boot", "0"])  # back to Youden's J for the other tests
    assert shown.exit_code == 0, shown.output
    assert "with --tta:" in shown.output
    assert json.loads((run / "calibration.json").read_text(encoding="utf-8"))["tta"]["criterion"] == "youden"


@pytest.fixture
def distinct(trained, tmp_path) -> Path:
    """A copy of the run whose TTA section is set by hand to values far from the plain ones, so which one was
    applied shows in every number."""
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    report_run(run, n_boot=0)
    calibration = load_calibration(run / "calibration.json")
    assert calibration.tta is not None
    calibration.tta.temperature, calibration.tta.threshold = 2.5, 0.4321
    calibration.tta.temperature_applied, calibration.tta.temperature_note = True, "applied: set by hand"
    save_calibration(run / "calibration.json", calibration)
    return run


def test_predict_tta_applies_the_tta_operating_point_and_says_so(trained, distinct, tmp_path):
    scans, out = trained["scans"], tmp_path / "tta.csv"
    result = runner.invoke(app, ["predict", *scans, "--model", str(distinct), "--tta", "--threshold", "auto",
                                 "-o", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert NOTE not in _flat(result.output)
    assert "T = 2.500" in result.output and "test-time augmentation" in _flat(result.output)
    rows = _read(out)
    assert {(r["threshold"], r["temperature"]) for r in rows} == {("0.4321", "2.5")}  # the values used
    raw = _tta_probs(distinct, scans)
    calibrated = apply_temperature(raw, 2.5)
    np.testing.assert_allclose([float(r["prob_malignant"]) for r in rows], calibrated[:, 1], atol=2e-6)
    assert [r["prediction"] for r in rows] == ["malignant" if p >= 0.4321 else "benign" for p in calibrated[:, 1]]
    # --no-calibrate: the TTA threshold moved to the raw TTA probabilities with the TTA temperature
    raw_out = tmp_path / "raw.csv"
    result = runner.invoke(app, ["predict", *scans, "--model", str(distinct), "--tta", "--threshold", "auto",
                                 "--no-calibrate", "-o", str(raw_out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    cut = float(_read(raw_out)[0]["threshold"])
    assert apply_temperature(np.array([[1 - cut, cut]]), 2.5)[0, 1] == pytest.approx(0.4321, abs=1e-5)
    assert {r["temperature"] for r in _read(raw_out)} == {""}
    # without --tta the plain values are used, as before
    plain = load_calibration(distinct / "calibration.json")
    plain_out = tmp_path / "plain.csv"
    result = runner.invoke(app, ["predict", *scans, "--model", str(distinct), "--threshold", "auto",
                                 "-o", str(plain_out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert not plain.temperature_applied  # too few validation cases for a temperature: none in the table
    assert {(r["threshold"], r["temperature"]) for r in _read(plain_out)} == {(str(round(plain.threshold, 6)), "")}


def test_evaluate_tta_scores_at_the_tta_operating_point(trained, distinct, tmp_path):
    out = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", str(distinct), "--data", str(trained["data"]), "--tta", "--out",
                                 str(out), "--device", "cpu", "--n-boot", "0"])
    assert result.exit_code == 0, result.output
    assert NOTE not in _flat(result.output) and "fitted on the validation predictions" in _flat(result.output)
    cal = json.loads((out / "summary.json").read_text(encoding="utf-8"))["calibration"]
    assert cal["fitted_with_tta"] is True and cal["temperature"] == 2.5
    assert cal["operating_point"]["threshold"] == 0.4321
    report = _flat((out / "report.md").read_text(encoding="utf-8"))
    assert NOTE not in report and "with test-time augmentation (8 flips)" in report
    plain = runner.invoke(app, ["evaluate", str(distinct), "--data", str(trained["data"]), "--out",
                                str(tmp_path / "plain"), "--device", "cpu", "--n-boot", "0"])
    assert plain.exit_code == 0, plain.output
    cal = json.loads((tmp_path / "plain" / "summary.json").read_text(encoding="utf-8"))["calibration"]
    assert cal["fitted_with_tta"] is False and cal["temperature"] != 2.5


def test_a_calibration_without_the_tta_section_still_works_with_the_note(trained, tmp_path):
    """calibration.json written before the TTA section existed: loaded, its plain values used with --tta, and the
    note says how to get a TTA operating point."""
    run = tmp_path / "old"
    shutil.copytree(trained["run"], run)
    report_run(run, n_boot=0)
    values = json.loads((run / "calibration.json").read_text(encoding="utf-8"))
    del values["tta"]
    (run / "calibration.json").write_text(json.dumps(values), encoding="utf-8")
    assert load_calibration(run / "calibration.json").tta is None
    out = tmp_path / "p.csv"
    result = runner.invoke(app, ["predict", *trained["scans"], "--model", str(run), "--tta", "--threshold", "auto",
                                 "-o", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    text = _flat(result.output)
    assert NOTE in text and "medconvnext train --resume RUN" in text
    assert not values["temperature_applied"]  # too few validation cases for a temperature: none in the table
    assert {(r["threshold"], r["temperature"]) for r in _read(out)} == {(str(round(values["threshold"], 6)), "")}
    evaluated = runner.invoke(app, ["evaluate", str(run), "--data", str(trained["data"]), "--tta", "--out",
                                    str(tmp_path / "eval"), "--device", "cpu", "--n-boot", "0"])
    assert evaluated.exit_code == 0, evaluated.output
    assert NOTE in _flat(evaluated.output)
    assert NOTE in _flat((tmp_path / "eval" / "report.md").read_text(encoding="utf-8"))
    cal = json.loads((tmp_path / "eval" / "summary.json").read_text(encoding="utf-8"))["calibration"]
    assert cal["fitted_with_tta"] is False and cal["temperature"] == pytest.approx(values["temperature"])


def test_resume_of_a_finished_run_writes_missing_tta_predictions_and_trains_nothing(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    expected = (run / "val_predictions_tta.csv").read_text(encoding="utf-8")
    (run / "val_predictions_tta.csv").unlink()  # a run trained before the file existed, or stopped before it
    kept = {name: (run / name).read_bytes() for name in ("checkpoint_best.safetensors", "metrics.jsonl",
                                                         "training_state.pt", "val_predictions.csv")}
    result = runner.invoke(app, ["train", "--resume", str(run)])
    assert result.exit_code == 0, result.output
    assert "nothing trained" in result.output and "val_predictions_tta.csv" in "".join(result.output.split())
    assert {name: (run / name).read_bytes() for name in kept} == kept
    assert (run / "val_predictions_tta.csv").read_text(encoding="utf-8") == expected
    again = runner.invoke(app, ["train", "--resume", str(run)])  # complete now: nothing left to do, as before
    assert again.exit_code == 2 and "already finished" in again.output


def _config(data: Path, **overrides: object):
    from medconvnext.config import Config, apply_overrides

    values = {"data.path": str(data), "model.name": "convmixer_128_4", "model.args.dim": 16, "model.args.depth": 1,
              "train.epochs": 1, "train.batch_size": 4, "train.device": "cpu", "data.val_fraction": 0.4, **overrides}
    return apply_overrides(Config(), values)


def test_the_tta_predictions_never_outlive_their_best_checkpoint(trained, tmp_path):
    """Extended with --epochs: the file goes when a new best checkpoint is saved (a run stopped there has none, not
    a stale one) and comes back for the final best; --overwrite never leaves the old run's file behind."""
    run = tmp_path / "run"
    config = _config(trained["data"], **{"train.select": "last"})  # every epoch saves a new best checkpoint
    train(config, run)
    first = (run / "val_predictions_tta.csv").read_text(encoding="utf-8")
    with pytest.raises(KeyboardInterrupt):
        resume(run, epochs=2, callbacks=StopAfter(2))
    assert not (run / "val_predictions_tta.csv").exists()  # epoch 2's checkpoint is the best now
    result = resume(run, epochs=2)  # finished: writes the file for the final best checkpoint
    assert result.epochs_run == 0 and result.best_epoch == 2
    rows = _read(run / "val_predictions_tta.csv")
    expected = _tta_probs(run, _case_paths(trained["data"], run, run / "val_predictions_tta.csv"))
    np.testing.assert_allclose([float(r["prob_malignant"]) for r in rows], expected[:, 1], atol=2e-6)
    assert (run / "val_predictions_tta.csv").read_text(encoding="utf-8") != first
    with pytest.raises(KeyboardInterrupt):
        train(config, run, overwrite=True, callbacks=StopAfter(1))
    assert not (run / "val_predictions_tta.csv").exists()


def test_an_ensemble_of_runs_gets_its_tta_operating_point_from_their_mean_tta_predictions(trained, tmp_path):
    data, first = trained["data"], trained["run"]
    other = tmp_path / "wider"  # the same seed and val fraction: the same validation cases, other weights
    train(_config(data, **{"model.args.dim": 24, "train.epochs": 2}), other)
    tables = [read_predictions(r / "val_predictions_tta.csv") for r in (first, other)]
    order = [np.argsort(t.images) for t in tables]
    assert [tables[1].images[i] for i in order[1]] == [tables[0].images[i] for i in order[0]]
    mean = (tables[0].probs[order[0], 1] + tables[1].probs[order[1], 1]) / 2
    point = choose_threshold(tables[0].y_true[order[0]] == 1, mean)
    out = tmp_path / "p.csv"
    result = runner.invoke(app, ["predict", *trained["scans"], "--model", str(first), "--model", str(other), "--tta",
                                 "--threshold", "auto", "-o", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert NOTE not in _flat(result.output)
    assert {(r["threshold"], r["temperature"]) for r in _read(out)} == {(str(round(point.threshold, 6)), "")}
    evaluated = runner.invoke(app, ["evaluate", str(first), str(other), "--data", str(data), "--tta", "--out",
                                    str(tmp_path / "ens"), "--device", "cpu", "--n-boot", "0"])
    assert evaluated.exit_code == 0, evaluated.output
    cal = json.loads((tmp_path / "ens" / "summary.json").read_text(encoding="utf-8"))["calibration"]
    assert cal["fitted_with_tta"] is True and cal["operating_point"]["threshold"] == pytest.approx(point.threshold)
    assert NOTE not in _flat(evaluated.output)
    # one run without TTA predictions: the plain operating point of the ensemble, with the note
    (other / "val_predictions_tta.csv").unlink()
    result = runner.invoke(app, ["predict", *trained["scans"], "--model", str(first), "--model", str(other), "--tta",
                                 "--threshold", "auto", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert NOTE in _flat(result.output)
    assert f"{other} has no held-out predictions (val_predictions_tta.csv)" in _flat(result.output)
    evaluated = runner.invoke(app, ["evaluate", str(first), str(other), "--data", str(data), "--tta", "--out",
                                    str(tmp_path / "ens_plain"), "--device", "cpu", "--n-boot", "0"])
    assert evaluated.exit_code == 0, evaluated.output
    cal = json.loads((tmp_path / "ens_plain" / "summary.json").read_text(encoding="utf-8"))["calibration"]
    assert cal["fitted_with_tta"] is False and str(other) in cal["tta_missing"]
    report = _flat((tmp_path / "ens_plain" / "report.md").read_text(encoding="utf-8"))
    assert NOTE in report and f"{other} has no held-out predictions" in report
    # both runs without them: both named at once
    (first / "val_predictions_tta.csv").rename(tmp_path / "saved_tta.csv")
    result = runner.invoke(app, ["predict", *trained["scans"], "--model", str(first), "--model", str(other), "--tta",
                                 "--threshold", "auto", "--device", "cpu"])
    (tmp_path / "saved_tta.csv").rename(first / "val_predictions_tta.csv")  # the fixture's run, shared
    assert result.exit_code == 0, result.output
    assert f"{first} (val_predictions_tta.csv), {other} (val_predictions_tta.csv) have no" in _flat(result.output)
