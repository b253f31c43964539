"""evaluate and report end to end through the CLI, with tiny models."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_dataset
from sklearn import metrics as skm
from typer.testing import CliRunner

from medconvnext.cli.main import app

runner = CliRunner()
TINY_CONVMIXER = ["--model", "convmixer_128_4", "--set", "model.args.dim=16", "--set", "model.args.depth=1",
                  "--device", "cpu", "--batch-size", "4", "--epochs", "1"]


def _flat(text: str) -> str:
    return " ".join(text.split())


def _read(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    data = make_dataset(root / "data", n=16, test=2)  # 12 cases in the folds, 4 test cases
    cv = runner.invoke(app, ["cv", "--data", str(data), "--folds", "2", "--out", str(root / "cv"), "--n-boot", "50",
                             *TINY_CONVMIXER])
    assert cv.exit_code == 0, cv.output
    assert "out-of-fold" in cv.output and "test (ensemble)" in cv.output
    train = runner.invoke(app, ["train", "--data", str(data), "--out", str(root / "train"), *TINY_CONVMIXER])
    assert train.exit_code == 0, train.output
    # a train run's calibration.json comes from `report` (a cv writes its own): every test below can use it alone
    report = runner.invoke(app, ["report", str(root / "train"), "--n-boot", "0"])
    assert report.exit_code == 0, report.output
    return {"data": data, "cv": root / "cv", "train": root / "train", "root": root}


def test_evaluate_test_split_with_the_fold_ensemble(runs):
    out = runs["root"] / "eval_cv"
    result = runner.invoke(app, ["evaluate", str(runs["cv"]), "--data", str(runs["data"]), "--split", "test",
                                 "--out", str(out), "--device", "cpu", "--n-boot", "50"])
    assert result.exit_code == 0, result.output
    assert "evaluated 4 test case(s) with 2 model(s)" in result.output
    assert "possible leakage" not in result.output
    rows = _read(out / "predictions.csv")
    assert [r["image"].rsplit("/", 1)[-1] for r in rows] == [f"c{i}.nii.gz" for i in range(12, 16)]
    # the same ensemble as the cv's own test-set predictions
    cv_rows = _read(runs["cv"] / "test_predictions.csv")
    for row, cv_row in zip(rows, cv_rows, strict=True):
        assert float(row["prob_malignant"]) == pytest.approx(float(cv_row["prob_malignant"]), abs=1e-5)
    y = np.array([r["label"] == "malignant" for r in rows], dtype=int)
    p = np.array([float(r["prob_malignant"]) for r in rows])
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["pooled"]["n"] == 4
    assert summary["pooled"]["auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert summary["pooled"]["accuracy"] == pytest.approx(skm.accuracy_score(y, (p > 0.5).astype(int)))
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "ensemble of its 2 fold models" in report
    # the cv's calibration (fitted on its out-of-fold predictions) and threshold, applied to these test cases
    from medconvnext.results.calibration import apply_temperature

    stored = json.loads((runs["cv"] / "calibration.json").read_text(encoding="utf-8"))
    cal = summary["calibration"]
    assert cal["temperature"] == pytest.approx(stored["temperature"]) and "evaluated run's calibration" in cal["source"]
    score = apply_temperature(np.stack([1 - p, p], axis=1), stored["temperature"])[:, 1]
    called = score >= stored["threshold"]
    op = cal["operating_point"]
    assert (op["tp"], op["fn"], op["tn"], op["fp"]) == (int((called & (y == 1)).sum()), int((~called & (y == 1)).sum()),
                                                        int((~called & (y == 0)).sum()), int((called & (y == 0)).sum()))
    assert "## Operating point" in report
    assert (out / "report.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_evaluate_single_run_and_training_cases_warn(runs):
    result = runner.invoke(app, ["evaluate", str(runs["train"]), "--data", str(runs["data"]), "--split", "train",
                                 "--device", "cpu", "--n-boot", "0"])
    assert result.exit_code == 0, result.output
    assert "with 1 model(s)" in result.output
    assert "warning: possible leakage" in result.output  # these cases trained the model
    assert (runs["train"] / "eval_train" / "predictions.csv").is_file()
    strict = runner.invoke(app, ["evaluate", str(runs["train"]), "--data", str(runs["data"]), "--split", "all",
                                 "--out", str(runs["root"] / "strict"), "--strict", "--device", "cpu"])
    assert strict.exit_code == 2 and "refused because of --strict" in strict.output
    assert not (runs["root"] / "strict").exists()


def test_report_regenerates_cv_and_train_reports(runs):
    before = json.loads((runs["cv"] / "cv_summary.json").read_text(encoding="utf-8"))
    (runs["cv"] / "report.md").unlink()
    result = runner.invoke(app, ["report", str(runs["cv"]), "--n-boot", "50"])
    assert result.exit_code == 0, result.output
    assert (runs["cv"] / "report.md").is_file()
    after = json.loads((runs["cv"] / "cv_summary.json").read_text(encoding="utf-8"))
    assert after == before
    result = runner.invoke(app, ["report", str(runs["train"]), "--n-boot", "0", "--target-sensitivity", "0.9"])
    assert result.exit_code == 0, result.output
    stored = json.loads((runs["train"] / "calibration.json").read_text(encoding="utf-8"))
    assert stored["criterion"] == "sensitivity>=0.9" and stored["sensitivity"] >= 0.9
    summary = json.loads((runs["train"] / "summary.json").read_text(encoding="utf-8"))
    val = _read(runs["train"] / "val_predictions.csv")
    assert summary["pooled"]["n"] == len(val) and summary["scope"] == "all"
    assert "Validation report" in (runs["train"] / "report.md").read_text(encoding="utf-8")


def _probs(path, column="prob_malignant"):
    return np.array([float(r[column]) for r in _read(path)])


def test_evaluate_ensemble_of_runs_and_tta(runs):
    from medconvnext.engine.inference import Predictor

    data, root = str(runs["data"]), runs["root"]
    for name, run in (("cv", runs["cv"]), ("train", runs["train"])):
        alone = runner.invoke(app, ["evaluate", str(run), "--data", data, "--out", str(root / f"alone_{name}"),
                                    "--device", "cpu", "--n-boot", "0"])
        assert alone.exit_code == 0, alone.output
    both = runner.invoke(app, ["evaluate", str(runs["cv"]), str(runs["train"]), "--data", data,
                               "--out", str(root / "both"), "--device", "cpu", "--n-boot", "0"])
    assert both.exit_code == 0, both.output
    assert "with 3 model(s)" in both.output  # 2 folds + 1 run, every model weighs the same
    cv_probs, train_probs = (_probs(root / f"alone_{name}" / "predictions.csv") for name in ("cv", "train"))
    expected = (2 * cv_probs + train_probs) / 3
    np.testing.assert_allclose(_probs(root / "both" / "predictions.csv"), expected, atol=1e-5)
    report = (root / "both" / "report.md").read_text(encoding="utf-8")
    assert "ensemble of 2 runs" in report
    # a cv's out-of-fold cases and a train run's val cases differ: no honest operating point for the two
    assert "no operating point" in both.output and "held out different cases" in " ".join(both.output.split())
    assert "No operating point" in report
    assert f"Evaluation: {runs['cv'].name} + {runs['train'].name} on test cases" in report
    assert f"Evaluation: {runs['train'].name} on test cases" in (root / "alone_train" / "report.md").read_text(
        encoding="utf-8")

    tta = runner.invoke(app, ["evaluate", str(runs["train"]), "--data", data, "--out", str(root / "tta"),
                              "--tta", "--device", "cpu", "--n-boot", "0"])
    assert tta.exit_code == 0, tta.output
    rows = _read(root / "tta" / "predictions.csv")
    flipped = Predictor.load(runs["train"], device="cpu", tta=True).predict_files([r["image"] for r in rows])
    np.testing.assert_allclose(_probs(root / "tta" / "predictions.csv"), flipped[:, 1], atol=1e-5)
    assert not np.allclose(flipped[:, 1], _probs(root / "alone_train" / "predictions.csv"), atol=1e-6)
    assert json.loads((root / "tta" / "evaluation.json").read_text(encoding="utf-8"))["tta"] is True
    # the run has TTA validation predictions, so its operating point for --tta was fitted on them: said where it is
    # shown, and no note that it was chosen without TTA (tests/test_tta_operating_point.py: runs without them)
    stored = json.loads((runs["train"] / "calibration.json").read_text(encoding="utf-8"))
    cal = json.loads((root / "tta" / "summary.json").read_text(encoding="utf-8"))["calibration"]
    assert cal["fitted_with_tta"] and cal["operating_point"]["threshold"] == pytest.approx(stored["tta"]["threshold"])
    said = " ".join(tta.output.split())
    assert "operating point" in said and "with test-time augmentation (8 flips)" in said
    assert "without test-time augmentation" not in said
    report_tta = " ".join((root / "tta" / "report.md").read_text(encoding="utf-8").split())
    assert "without test-time augmentation" not in report_tta and "The operating point was fitted on" in report_tta
    assert "`medconvnext predict --tta --threshold auto` uses this threshold" in report_tta
    assert "test-time augmentation" not in " ".join(alone.output.split())


def test_a_seed_ensemble_gets_its_operating_point_from_the_mean_validation_predictions(runs, tmp_path):
    """Two runs that held out the same cases: the ensemble's threshold is Youden's J on their mean val predictions,
    shown by evaluate (on the evaluated cases) and applied by predict --threshold auto."""
    from medconvnext.results.calibration import choose_threshold

    data, root = str(runs["data"]), runs["root"]
    other = root / "train_wider"  # the same seed, so the same validation cases, other weights
    if not other.is_dir():
        trained = runner.invoke(app, ["train", "--data", data, "--out", str(other), *TINY_CONVMIXER,
                                      "--set", "model.args.dim=24"])
        assert trained.exit_code == 0, trained.output
    val = [_read(run / "val_predictions.csv") for run in (runs["train"], other)]
    assert [r["image"] for r in val[0]] == [r["image"] for r in val[1]]
    mean = (_probs(runs["train"] / "val_predictions.csv") + _probs(other / "val_predictions.csv")) / 2
    point = choose_threshold(np.array([r["label"] == "malignant" for r in val[0]]), mean)
    result = runner.invoke(app, ["evaluate", str(runs["train"]), str(other), "--data", data, "--out",
                                 str(tmp_path / "ens"), "--device", "cpu", "--n-boot", "0"])
    assert result.exit_code == 0, result.output
    assert "metrics" in result.output and "│ test " in result.output  # the set is named by the split
    op = json.loads((tmp_path / "ens" / "summary.json").read_text(encoding="utf-8"))["calibration"]
    assert op["operating_point"]["threshold"] == pytest.approx(point.threshold) and op["temperature"] == 1.0
    assert "operating point (youden)" in result.output and "uncalibrated (T = 1)" in result.output
    report = (tmp_path / "ens" / "report.md").read_text(encoding="utf-8")
    assert "Threshold (P(malignant))" in report and "Calibration (temperature scaling)" not in report
    assert not (tmp_path / "ens" / "calibration_before_after.png").exists()
    scans = [str(runs["data"] / r["image"]) for r in _read(runs["data"] / "labels.csv")[:4]]
    out = tmp_path / "p.csv"
    predicted = runner.invoke(app, ["predict", *scans, "--model", str(runs["train"]), "--model", str(other),
                                    "--threshold", "auto", "-o", str(out), "--device", "cpu"])
    assert predicted.exit_code == 0, predicted.output
    rows = _read(out)
    assert {r["threshold"] for r in rows} == {str(round(point.threshold, 6))}
    assert {r["temperature"] for r in rows} == {""}  # an ensemble is served uncalibrated
    assert [r["prediction"] for r in rows] == ["malignant" if float(r["prob_malignant"]) >= point.threshold
                                               else "benign" for r in rows]
    # data without a split column: the two runs share their splits.json, so --split val is their common val set
    unmarked = tmp_path / "unmarked.csv"
    with open(unmarked, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "label"])
        writer.writeheader()
        writer.writerows({"image": str(runs["data"] / r["image"]), "label": r["label"]}
                         for r in _read(runs["data"] / "labels.csv"))
    result = runner.invoke(app, ["evaluate", str(runs["train"]), str(other), "--data", str(unmarked), "--split",
                                 "val", "--out", str(tmp_path / "ens_val"), "--device", "cpu", "--n-boot", "0"])
    assert result.exit_code == 0, result.output
    scored = [r["image"] for r in _read(tmp_path / "ens_val" / "predictions.csv")]
    assert sorted(Path(p).name.removesuffix(".nii.gz") for p in scored) == sorted(r["image"] for r in val[0])
    # every case (--split all): the leakage warning names the run each training case belongs to
    result = runner.invoke(app, ["evaluate", str(runs["train"]), str(other), "--data", str(unmarked), "--split",
                                 "all", "--out", str(tmp_path / "ens_all"), "--device", "cpu", "--n-boot", "0"])
    assert result.exit_code == 0, result.output
    flat = _flat(result.output)
    assert "(train's own train case)" in flat  # the first findings listed are the first run's
    # a cv run has no single val set: with it, the ensemble has no common one, and nothing is written
    result = runner.invoke(app, ["evaluate", str(runs["train"]), str(runs["cv"]), "--data", str(unmarked), "--split",
                                 "val", "--out", str(tmp_path / "mixed"), "--device", "cpu", "--n-boot", "0"])
    assert result.exit_code == 2 and "no common set" in result.output and not (tmp_path / "mixed").exists()
    # nor a common training set: each run's training cases hold the other's validation cases
    result = runner.invoke(app, ["evaluate", str(runs["train"]), str(runs["cv"]), "--data", str(unmarked), "--split",
                                 "train", "--out", str(tmp_path / "mixed"), "--device", "cpu", "--n-boot", "0"])
    assert result.exit_code == 2 and "no common set" in result.output and not (tmp_path / "mixed").exists()


def test_evaluate_several_runs_needs_out(runs):
    result = runner.invoke(app, ["evaluate", str(runs["cv"]), str(runs["train"]), "--data", str(runs["data"])])
    assert result.exit_code == 2 and "--out is required" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--split", "holdout"], "Invalid value for '--split'"),
        (["--split", "val"], "honest estimate is its out-of-fold predictions"),
        (["--out", "RUN"], "would overwrite a run's own report"),
    ],
)
def test_evaluate_user_errors(runs, args, message):
    args = [str(runs["cv"]) if a == "RUN" else a for a in args]
    result = runner.invoke(app, ["evaluate", str(runs["cv"]), "--data", str(runs["data"]), *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


def test_report_of_an_empty_folder_is_a_user_error(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "nothing to report" in result.output
