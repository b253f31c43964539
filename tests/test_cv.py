"""Cross-validation: folds (stratified, grouped), out-of-fold predictions, report numbers, resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_dataset
from sklearn import metrics as skm

from medconvnext.config import Config, apply_overrides
from medconvnext.data.datalist import Case, Datalist
from medconvnext.data.splits import cv_splits, train_val_split
from medconvnext.engine.cv import cross_validate
from medconvnext.engine.trainer import SilentCallbacks
from medconvnext.errors import UserError


def tiny_config(data: Path, epochs: int = 1) -> Config:
    overrides = {"data.path": str(data), "model.name": "convmixer_128_4", "model.args.dim": 16, "model.args.depth": 1,
                 "train.epochs": epochs, "train.batch_size": 4, "train.device": "cpu", "data.leakage": "off"}
    return apply_overrides(Config(), overrides)


def _datalist(n: int, classes=("a", "b"), subjects: int | None = None, test: int = 0) -> Datalist:
    cases = []
    for i in range(n):
        subject = f"s{i % subjects}" if subjects else None
        cases.append(Case(f"c{i:02d}", (f"c{i:02d}.nii",), classes[i % len(classes)], subject,
                          "test" if i >= n - test else None, {"site": f"site{i % 3}"}))
    return Datalist(cases, sorted(classes), "mem")


def _read(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_folds_are_stratified_and_cover_every_non_test_case_once():
    datalist = _datalist(30, classes=("a", "b", "c"), test=3)
    folds = cv_splits(datalist, 3, seed=0)
    pool = {c.case_id for c in datalist.cases if c.split != "test"}
    val = [i for f in folds for i in f.split.val]
    assert sorted(val) == sorted(pool)  # every non-test case in exactly one validation fold
    labels = {c.case_id: c.label for c in datalist.cases}
    for fold in folds:
        assert not set(fold.split.train) & set(fold.split.val)
        assert set(fold.split.train) | set(fold.split.val) == pool
        assert fold.split.test == ["c27", "c28", "c29"]
        assert sorted({labels[i] for i in fold.split.val}) == ["a", "b", "c"]
        counts = [sum(labels[i] == k for i in fold.split.val) for k in "abc"]
        assert max(counts) - min(counts) <= 1
    assert [f.split.val for f in folds] == [f.split.val for f in cv_splits(datalist, 3, seed=0)]
    assert [f.split.val for f in folds] != [f.split.val for f in cv_splits(datalist, 3, seed=1)]
    repeated = cv_splits(datalist, 3, seed=0, repeats=2)
    assert [(f.repeat, f.index) for f in repeated] == [(r, i) for r in range(2) for i in range(3)]
    assert [f.split.val for f in repeated[:3]] == [f.split.val for f in folds]


@pytest.mark.parametrize("group_by", [None, "subject", "site"])
def test_grouped_folds_keep_each_group_in_one_fold(group_by):
    datalist = _datalist(36, subjects=9)
    folds = cv_splits(datalist, 3, seed=0, group_by=group_by)
    column = group_by or "subject"  # a subject column is used by default
    by_id = {c.case_id: c for c in datalist.cases}
    fold_of_group: dict[str, int] = {}
    for fold in folds:
        for case_id in fold.split.val:
            group = by_id[case_id].group(column)
            assert fold_of_group.setdefault(group, fold.index) == fold.index, f"{group} in two folds"
        train_groups = {by_id[i].group(column) for i in fold.split.train}
        assert not train_groups & {by_id[i].group(column) for i in fold.split.val}
    assert sorted(i for f in folds for i in f.split.val) == sorted(by_id)


def test_fold_errors_are_user_errors():
    with pytest.raises(UserError, match="--group-by scanner"):
        cv_splits(_datalist(12, subjects=4), 3, group_by="scanner")
    with pytest.raises(UserError, match="4 subjects for 5 folds"):
        cv_splits(_datalist(12, subjects=4), 5)
    with pytest.raises(UserError, match="at least 2"):
        cv_splits(_datalist(12), 1)


def test_train_split_keeps_subjects_together():
    datalist = _datalist(40, subjects=10)
    split = train_val_split(datalist, 0.2, seed=0)
    by_id = {c.case_id: c for c in datalist.cases}
    assert not {by_id[i].subject for i in split.train} & {by_id[i].subject for i in split.val}
    assert 4 <= len(split.val) <= 12


class StopInFold(SilentCallbacks):
    """Simulates a crash after the first epoch of the ``fold``-th fold that trains (0-based)."""

    def __init__(self, fold: int) -> None:
        self.fold, self.started = fold, -1

    def on_start(self, total_epochs: int, steps_per_epoch: int) -> None:
        self.started += 1

    def on_epoch_end(self, record: dict) -> None:
        if self.started == self.fold:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def binary_cv(tmp_path_factory):
    """A 3-fold binary cross-validation (2 epochs) that is interrupted in fold 1, then continued."""
    root = tmp_path_factory.mktemp("cv")
    data = make_dataset(root / "data")
    config = tiny_config(data, epochs=2)
    with pytest.raises(KeyboardInterrupt):
        cross_validate(config, root / "run", folds=3, callbacks=StopInFold(1), n_boot=200)
    stamps = {p: p.stat().st_mtime_ns for p in (root / "run").glob("fold_*/checkpoint_last.safetensors")}
    lines: list[str] = []
    result = cross_validate(config, root / "run", folds=3, log=lines.append, n_boot=200)
    return {"data": data, "run": root / "run", "result": result, "lines": lines, "stamps": stamps, "config": config}


def test_cv_run_layout_and_oof_predictions(binary_cv):
    run = binary_cv["run"]
    for name in ("cv.json", "splits.json", "oof_predictions.csv", "test_predictions.csv", "cv_summary.json",
                 "report.md", "report.html"):
        assert (run / name).is_file(), name
    params = json.loads((run / "cv.json").read_text(encoding="utf-8"))
    assert (params["folds"], params["repeats"], params["group_by"]) == (3, 1, "subject")
    rows = _read(run / "oof_predictions.csv")
    assert list(rows[0]) == ["image", "label", "fold", "prediction", "prob_benign", "prob_malignant"]
    labels = _read(binary_cv["data"] / "labels.csv")
    non_test = sorted(str((binary_cv["data"] / r["image"]).resolve()) for r in labels if r["split"] != "test")
    assert sorted(r["image"] for r in rows) == non_test  # every non-test case exactly once
    splits = json.loads((run / "splits.json").read_text(encoding="utf-8"))
    for row in rows:  # each case predicted by the fold that held it out
        case_id = Path(row["image"]).name.removesuffix(".nii.gz")
        assert case_id in splits["folds"][int(row["fold"])]["val"]
    test_rows = _read(run / "test_predictions.csv")
    assert [Path(r["image"]).name for r in test_rows] == ["c16.nii.gz", "c17.nii.gz"]
    assert {r["fold"] for r in test_rows} == {"-1"}


def test_every_file_a_cv_writes_is_named_by_rundir(binary_cv):
    from test_rundir_names import _unnamed

    assert not _unnamed(binary_cv["run"]), _unnamed(binary_cv["run"])


def test_oof_tta_predictions_are_the_folds_best_checkpoints_with_tta(binary_cv):
    """Every fold predicted its validation cases with TTA after its last epoch (fold 1 was interrupted and resumed:
    its file belongs to its final best checkpoint), collected as the out-of-fold table is."""
    from medconvnext.engine.inference import Predictor

    run = binary_cv["run"]
    plain, tta = _read(run / "oof_predictions.csv"), _read(run / "oof_predictions_tta.csv")
    assert list(tta[0]) == list(plain[0])
    assert [(r["image"], r["label"], r["fold"]) for r in tta] == [(r["image"], r["label"], r["fold"]) for r in plain]
    for fold in range(3):
        rows = [r for r in tta if r["fold"] == str(fold)]
        predictor = Predictor.load(run / f"fold_{fold}" / "checkpoint_best.safetensors", device="cpu", tta=True)
        expected = predictor.predict_files([r["image"] for r in rows])
        np.testing.assert_allclose([float(r["prob_malignant"]) for r in rows], expected[:, 1], atol=2e-6)
        ids = [r["image"] for r in _read(run / f"fold_{fold}" / "val_predictions_tta.csv")]
        assert sorted(ids) == sorted(Path(r["image"]).name.removesuffix(".nii.gz") for r in rows)


def test_a_continued_cv_writes_the_tta_predictions_a_finished_fold_lacks(binary_cv, tmp_path):
    """A fold trained before the TTA predictions existed (or stopped before they were written): continuing the cv
    writes them with the fold's best checkpoint, retrains nothing, and refits the TTA operating point."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(binary_cv["run"], run)
    fold = run / "fold_2"
    expected = (fold / "val_predictions_tta.csv").read_text(encoding="utf-8")
    stamp = (fold / "checkpoint_best.safetensors").stat().st_mtime_ns
    for old in (fold / "val_predictions_tta.csv", run / "oof_predictions_tta.csv"):
        old.unlink()
    values = json.loads((run / "calibration.json").read_text(encoding="utf-8"))
    values.pop("tta")  # as written before the TTA section existed
    (run / "calibration.json").write_text(json.dumps(values), encoding="utf-8")
    lines: list[str] = []
    cross_validate(binary_cv["config"], run, folds=3, log=lines.append, n_boot=0)
    assert "fold_2 (3/3): finished earlier, skipped (wrote its missing val_predictions_tta.csv" in lines[2]
    assert all(line.endswith("skipped") for line in lines[:2])
    assert (fold / "val_predictions_tta.csv").read_text(encoding="utf-8") == expected
    assert (fold / "checkpoint_best.safetensors").stat().st_mtime_ns == stamp
    assert _read(run / "oof_predictions_tta.csv") == _read(binary_cv["run"] / "oof_predictions_tta.csv")
    assert json.loads((run / "calibration.json").read_text(encoding="utf-8"))["tta"] is not None


def test_report_numbers_equal_sklearn(binary_cv):
    run = binary_cv["run"]
    rows = _read(run / "oof_predictions.csv")
    y = np.array([r["label"] == "malignant" for r in rows], dtype=int)
    p = np.array([float(r["prob_malignant"]) for r in rows])
    pred = (np.array([float(r["prob_benign"]) for r in rows]) < p).astype(int)
    summary = json.loads((run / "cv_summary.json").read_text(encoding="utf-8"))
    pooled = summary["pooled"]
    assert pooled["n"] == len(rows)
    assert pooled["auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert pooled["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert pooled["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert pooled["sensitivity"] == pytest.approx(skm.recall_score(y, pred, zero_division=0))
    assert pooled["f1"] == pytest.approx(skm.f1_score(y, pred, zero_division=0))
    assert pooled["mcc"] == pytest.approx(skm.matthews_corrcoef(y, pred))
    assert pooled["brier"] == pytest.approx(skm.brier_score_loss(y, p))
    assert pooled["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    low, high = pooled["ci"]["auc"]
    assert low <= pooled["auc"] <= high
    assert [m["fold"] for m in summary["per_fold"]] == [0, 1, 2]
    test = _read(run / "test_predictions.csv")
    yt = np.array([r["label"] == "malignant" for r in test], dtype=int)
    assert summary["test"]["n"] == 2
    assert summary["test"]["accuracy"] == pytest.approx(
        np.mean(yt == np.array([float(r["prob_malignant"]) > float(r["prob_benign"]) for r in test])))
    report = (run / "report.md").read_text(encoding="utf-8")
    assert f"| AUC (ROC) | {pooled['auc']:.3f} |" in report
    assert "Test set (fold -1, 2 cases)" in report and "ensemble of the 3 fold models" in report
    assert "fold_2" in report  # per-fold training table


def test_cv_resumes_fold_by_fold(binary_cv):
    run, lines = binary_cv["run"], binary_cv["lines"]
    assert "fold_0 (1/3): finished earlier, skipped" in lines[0]
    assert "fold_1 (2/3): resuming" in lines[1]
    assert "fold_2 (3/3): training" in lines[2]
    assert [r.action for r in binary_cv["result"].folds] == ["skipped", "resumed", "trained"]
    fold_0 = run / "fold_0" / "checkpoint_last.safetensors"
    assert fold_0.stat().st_mtime_ns == binary_cv["stamps"][fold_0]  # not retrained
    log = (run / "fold_1" / "metrics.jsonl").read_text(encoding="utf-8")
    epochs = [json.loads(line)["epoch"] for line in log.splitlines()]
    assert epochs == [1, 2]
    # a third run with the same parameters retrains nothing
    again: list[str] = []
    cross_validate(binary_cv["config"], run, folds=3, log=again.append, n_boot=0)
    assert all("skipped" in line for line in again if line.startswith("fold_"))


def test_cv_with_other_parameters_is_refused(binary_cv):
    config = tiny_config(binary_cv["data"], epochs=3)
    with pytest.raises(UserError, match=r"other parameters \(train.epochs: 2 -> 3\)"):
        cross_validate(config, binary_cv["run"], folds=3)
    with pytest.raises(UserError, match="folds: 3 -> 4"):
        cross_validate(binary_cv["config"], binary_cv["run"], folds=4)


def test_multiclass_cv_report_equals_sklearn(tmp_path):
    data = make_dataset(tmp_path / "data", classes=("a", "b", "c"), n=18, test=0)
    result = cross_validate(tiny_config(data), tmp_path / "run", folds=3, n_boot=50)
    rows = _read(tmp_path / "run" / "oof_predictions.csv")
    assert len(rows) == 18 and not (tmp_path / "run" / "test_predictions.csv").exists()
    names = ["a", "b", "c"]
    y = np.array([names.index(r["label"]) for r in rows])
    p = np.array([[float(r[f"prob_{c}"]) for c in names] for r in rows])
    pooled = result.summary["pooled"]
    assert pooled["auc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))
    pred = p.argmax(axis=1)
    assert pooled["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    assert pooled["f1_weighted"] == pytest.approx(skm.f1_score(y, pred, average="weighted", zero_division=0))
    assert pooled["mcc"] == pytest.approx(skm.matthews_corrcoef(y, pred))
    for k, name in enumerate(names):
        assert pooled["per_class"][name]["auc"] == pytest.approx(skm.roc_auc_score(y == k, p[:, k]))
    assert result.summary["test"] is None


def test_repeated_rows_are_resampled_per_case():
    """With --repeats every case has one out-of-fold row per repeat: the bootstrap resamples cases, so the
    interval of a table whose rows are all duplicated is the one of the table itself, not narrower."""
    from medconvnext.reports.summary import summarize
    from medconvnext.results.table import Predictions

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    p1 = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.25, 40), 0.01, 0.99)
    probs = np.stack([1 - p1, p1], axis=1)
    images = [f"c{i}" for i in range(40)]
    once = Predictions(images, y, probs, np.zeros(40, dtype=np.int64), ["a", "b"])
    twice = Predictions(images * 2, np.tile(y, 2), np.tile(probs, (2, 1)), np.repeat([0, 1], 40), ["a", "b"])
    ci_once = summarize(once, n_boot=300)["pooled"]["ci"]["auc"]
    pooled = summarize(twice, n_boot=300)["pooled"]
    assert pooled["n"] == 80 and pooled["n_images"] == 40
    width = pooled["ci"]["auc"][1] - pooled["ci"]["auc"][0]
    assert width == pytest.approx(ci_once[1] - ci_once[0], rel=0.25)


def test_cv_fits_calibration_and_predict_uses_it(binary_cv, tmp_path):
    from typer.testing import CliRunner

    from medconvnext.cli.main import app
    from medconvnext.reports.run import report_run
    from medconvnext.results.calibration import MIN_CASES_PER_CLASS, apply_temperature, choose_threshold

    run = binary_cv["run"]
    report_run(run, n_boot=100)  # an earlier test rewrote the report without bootstrap
    rows = _read(run / "oof_predictions.csv")
    y = np.array([r["label"] == "malignant" for r in rows], dtype=int)
    probs = np.array([[float(r["prob_benign"]), float(r["prob_malignant"])] for r in rows])
    stored = json.loads((run / "calibration.json").read_text(encoding="utf-8"))
    # a few cases of each class: no temperature is fitted (T = 1), and the file says why
    assert len(y) - y.sum() < MIN_CASES_PER_CLASS
    t = 1.0
    assert stored["temperature"] == t and not stored["temperature_applied"]
    assert stored["temperature_note"].startswith("not fitted: ") and stored["fitted_temperature"] is None
    point = choose_threshold(y == 1, apply_temperature(probs, t)[:, 1])
    assert (stored["threshold"], stored["criterion"]) == (pytest.approx(point.threshold), "youden")
    # the TTA section: the same fit on the out-of-fold predictions made with TTA
    tta_rows = _read(run / "oof_predictions_tta.csv")
    tta_probs = np.array([[float(r["prob_benign"]), float(r["prob_malignant"])] for r in tta_rows])
    y_tta = np.array([r["label"] == "malignant" for r in tta_rows], dtype=int)
    t_tta = 1.0
    tta_point = choose_threshold(y_tta == 1, apply_temperature(tta_probs, t_tta)[:, 1])
    assert stored["tta"]["temperature"] == pytest.approx(t_tta)
    assert stored["tta"]["threshold"] == pytest.approx(tta_point.threshold)
    assert stored["tta"]["fitted_on"].startswith("out-of-fold predictions with test-time augmentation")
    summary = json.loads((run / "cv_summary.json").read_text(encoding="utf-8"))
    assert summary["calibration"]["operating_point"]["sensitivity"] == pytest.approx(point.sensitivity)
    for name in ("sensitivity", "specificity", "f1", "f1_macro", "f1_weighted", "mcc", "brier", "ece"):
        assert summary["pooled"]["ci"][name][0] is not None, name  # every headline number has its interval
    low, high = summary["calibration"]["operating_point"]["ci"]["threshold"]
    assert 0 <= low <= high <= 1 and low <= stored["threshold"] <= high or low == high
    report = (run / "report.md").read_text(encoding="utf-8")
    assert "## Operating point" in report and "Temperature scaling was not fitted: " in _flat(report)
    html = (run / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") >= 5 and "src=\"http" not in html  # one offline file
    # predict: calibrated probabilities by default; --threshold auto calls malignant at the stored threshold
    runner = CliRunner()
    scans = [str(binary_cv["data"] / "img" / f"c{i}.nii.gz") for i in (16, 17)]
    raw_csv, auto_csv = tmp_path / "raw.csv", tmp_path / "auto.csv"
    result = runner.invoke(app, ["predict", *scans, "--model", str(run), "--device", "cpu", "--no-calibrate",
                                 "-o", str(raw_csv)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["predict", *scans, "--model", str(run), "--device", "cpu", "--threshold", "auto",
                                 "-o", str(auto_csv)])
    assert result.exit_code == 0, result.output
    assert "threshold" in result.output and "calibration: temperature not fitted: " in _flat(result.output)
    assert "probabilities uncalibrated" in _flat(result.output)
    raw = np.array([[float(r["prob_benign"]), float(r["prob_malignant"])] for r in _read(raw_csv)])
    auto = _read(auto_csv)
    calibrated = np.array([[float(r["prob_benign"]), float(r["prob_malignant"])] for r in auto])
    assert calibrated == pytest.approx(apply_temperature(raw, t), abs=1e-5)
    expected = ["malignant" if p >= stored["threshold"] else "benign" for p in calibrated[:, 1]]
    assert [r["prediction"] for r in auto] == expected
    # the written table says how its predictions were made; the uncalibrated argmax table leaves both empty
    assert {(r["threshold"], r["temperature"]) for r in auto} == {(str(round(stored["threshold"], 6)), "")}
    assert {(r["threshold"], r["temperature"]) for r in _read(raw_csv)} == {("", "")}
    assert "P(malignant) >= " in result.output and "temperature 1" not in result.output
    # --no-calibrate serves raw probabilities: the stored threshold moves to the raw scale and calls the same cases
    raw_auto_csv = tmp_path / "raw_auto.csv"
    result = runner.invoke(app, ["predict", *scans, "--model", str(run), "--device", "cpu", "--threshold", "auto",
                                 "--no-calibrate", "-o", str(raw_auto_csv)])
    assert result.exit_code == 0, result.output
    raw_auto = _read(raw_auto_csv)
    assert [r["prediction"] for r in raw_auto] == expected and {r["temperature"] for r in raw_auto} == {""}
    cut = float(raw_auto[0]["threshold"])
    assert apply_temperature(np.array([[1 - cut, cut]]), t)[0, 1] == pytest.approx(stored["threshold"], abs=1e-5)
    for value in ("high", "1.5"):  # refused before any model is loaded
        bad = runner.invoke(app, ["predict", scans[0], "--model", str(run), "--threshold", value])
        assert bad.exit_code == 2 and f"--threshold '{value}'" in bad.output and "ensemble of" not in bad.output
    twice = runner.invoke(app, ["predict", scans[0], "--model", str(run), "--model", f"{run}/"])
    assert twice.exit_code == 2 and "given twice" in twice.output


def test_a_calibration_fitted_for_other_weights_is_refused(binary_cv, tmp_path):
    """A run retrained in place must not be served the old model's temperature and threshold."""
    import shutil

    from typer.testing import CliRunner

    from medconvnext.cli.main import app
    from medconvnext.reports.run import report_run
    from medconvnext.rundir import RUN_FILES

    run = tmp_path / "cv"
    shutil.copytree(binary_cv["run"], run)
    report_run(run, n_boot=0)
    stored = json.loads((run / "calibration.json").read_text(encoding="utf-8"))
    assert sorted(stored["models"]) == sorted(f"fold_{i}/checkpoint_best.safetensors" for i in range(3))
    scan = str(binary_cv["data"] / "img" / "c16.nii.gz")
    runner = CliRunner()
    assert runner.invoke(app, ["predict", scan, "--model", str(run), "--threshold", "auto"]).exit_code == 0
    # other weights under the same name: fold 0's model in fold 1's place
    shutil.copyfile(run / "fold_0" / "checkpoint_best.safetensors", run / "fold_1" / "checkpoint_best.safetensors")
    result = runner.invoke(app, ["predict", scan, "--model", str(run), "--threshold", "auto"])
    assert result.exit_code == 2 and "fitted for other weights" in result.output
    # evaluate refuses it too, before writing any prediction table, and advises what it accepts
    result = runner.invoke(app, ["evaluate", str(run), "--data", str(binary_cv["data"]), "--split", "test",
                                 "--out", str(tmp_path / "eval"), "--n-boot", "0"])
    assert result.exit_code == 2 and "fitted for other weights" in result.output
    assert "--no-calibrate" not in result.output and not (tmp_path / "eval" / "predictions.csv").exists()
    assert {"calibration.json", "calibration_before_after.png"} <= RUN_FILES  # --overwrite removes them


@pytest.mark.parametrize(("key", "value", "field"), [("train.ema_bn_batches", -3, "train.ema_bn_batches"),
                                                     ("train.label_smoothing", 2.0, "train.label_smoothing"),
                                                     ("model.args.stem_conv_norm", "none", "stem_conv_norm")])
def test_cv_refuses_a_bad_option_before_writing_anything(tmp_path, key, value, field):
    """The options are checked before cv.json and splits.json exist, so the corrected command is not told that the
    folder 'holds a cross-validation with other parameters'."""
    data = make_dataset(tmp_path / "data", n=12)
    config = tiny_config(data)
    if key.startswith("model.args"):
        config.model.name, config.model.args = "convnext_med_iso", {"stem_conv_norm": value}
    else:  # set in Python, past --set's own check (which refuses it at once: below)
        setattr(config.train, key.split(".")[1], value)
        with pytest.raises(UserError, match=field):
            apply_overrides(tiny_config(data), {key: value})
    with pytest.raises(UserError, match=field):
        cross_validate(config, tmp_path / "cv", folds=2, callbacks=SilentCallbacks())
    assert not (tmp_path / "cv").exists() or not any((tmp_path / "cv").iterdir())


def test_a_diverged_fold_makes_the_test_ensemble_refuse_rather_than_write_nan(binary_cv, tmp_path):
    """cv's test ensemble goes through the predict gate: one fold model with a NaN weight (what a diverged training
    leaves) gives NaN probabilities, refused in one line naming the scan; no test_predictions.csv is written."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save_file

    run = tmp_path / "run"
    shutil.copytree(binary_cv["run"], run)
    (run / "test_predictions.csv").unlink()
    checkpoint = run / "fold_1" / "checkpoint_best.safetensors"
    with safe_open(str(checkpoint), framework="pt") as f:
        header, tensors = f.metadata(), {key: f.get_tensor(key) for key in f.keys()}
    head = next(key for key in tensors if key.endswith("weight") and tensors[key].is_floating_point()
                and "head" in key)
    tensors[head][...] = float("nan")
    save_file(tensors, str(checkpoint), metadata=header)
    with pytest.raises(UserError) as refused:
        cross_validate(binary_cv["config"], run, folds=3, n_boot=0)
    message = str(refused.value)
    assert "\n" not in message and "the model gave NaN/Inf probabilities" in message
    assert message.split(":")[0].endswith("c16.nii.gz")  # the first test scan
    assert not (run / "test_predictions.csv").exists()
