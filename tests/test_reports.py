"""medconvnext.reports: predictions table IO, summary (cv_summary.json), Markdown/HTML report."""

import csv
import json
import sys

import numpy as np
import pytest
from sklearn import metrics as skm

from medconvnext.errors import UserError
from medconvnext.reports import (
    predictions_from_rows,
    read_predictions,
    read_training_log,
    save_summary,
    summarize,
    write_predictions,
    write_report,
)

CLASSES = ["normal", "benign", "malignant"]


def _rows(num_classes: int = 3, n: int = 60, folds: int = 3, test_rows: int = 0, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    names = CLASSES[:num_classes] if num_classes <= 3 else [f"c{i}" for i in range(num_classes)]
    rows = []
    for i in range(n + test_rows):
        label = int(rng.integers(0, num_classes))
        logits = rng.normal(size=num_classes)
        logits[label] += 1.5
        probs = np.exp(logits) / np.exp(logits).sum()
        row = {"image": f"case_{i:03d}.nii.gz", "label": names[label], "fold": i % folds if i < n else -1}
        row["prediction"] = names[int(np.argmax(probs))]
        row.update({f"prob_{c}": round(float(probs[k]), 6) for k, c in enumerate(names)})
        rows.append(row)
    return rows


def _write_csv(path, rows, fields=None):
    fields = fields or list(rows[0])
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _training_logs(tmp_path, folds: int = 3) -> dict:
    logs = {}
    for fold in range(folds):
        path = tmp_path / f"fold_{fold}" / "metrics.jsonl"
        path.parent.mkdir()
        lines = [
            json.dumps({"epoch": e, "train_loss": 1 / (e + 1), "val_loss": None if e == 1 else 1.1 / (e + 1),
                        "val_auc": 0.5 + 0.1 * e})  # no val_accuracy: keys may be missing
            for e in range(4)
        ]
        path.write_text("\n".join(lines) + '\n{"epoch": 4, "train_lo',  # truncated last line (killed run)
                        encoding="utf-8")
        logs[f"fold_{fold}"] = path
    return logs


@pytest.fixture
def cv_csv(tmp_path):
    return _write_csv(tmp_path / "oof_predictions.csv", _rows())


def test_read_predictions(cv_csv):
    preds = read_predictions(cv_csv)
    assert preds.class_names == CLASSES
    assert preds.probs.shape == (60, 3) and len(preds) == 60
    assert sorted(set(preds.folds.tolist())) == [0, 1, 2]
    assert preds.images[0] == "case_000.nii.gz"


def test_read_predictions_without_fold_column(tmp_path):
    rows = _rows(num_classes=2)
    path = _write_csv(tmp_path / "p.csv", rows, fields=["image", "label", "prob_normal", "prob_benign"])
    preds = read_predictions(path)
    assert (preds.folds == -1).all()
    summary = summarize(preds, n_boot=0)
    assert summary["scope"] == "all" and summary["per_fold"] == [] and summary["pooled"]["n"] == 60


@pytest.mark.parametrize("missing", ["label", "image"])
def test_read_predictions_names_missing_column(tmp_path, missing):
    fields = [c for c in _rows()[0] if c != missing]
    path = _write_csv(tmp_path / "bad.csv", _rows(), fields=fields)
    with pytest.raises(UserError, match=rf"bad\.csv.*missing column '{missing}'"):
        read_predictions(path)


def test_read_predictions_user_errors(tmp_path):
    path = _write_csv(tmp_path / "noprob.csv", _rows(), fields=["image", "label", "fold", "prob_normal"])
    with pytest.raises(UserError, match=r"noprob\.csv.*prob_"):
        read_predictions(path)
    rows = _rows()
    rows[3]["label"] = "cyst"
    with pytest.raises(UserError, match=r"labels\.csv: row 5: label 'cyst'"):
        read_predictions(_write_csv(tmp_path / "labels.csv", rows))
    rows = _rows()
    rows[0]["prob_benign"] = "high"
    with pytest.raises(UserError, match=r"prob_benign"):
        read_predictions(_write_csv(tmp_path / "value.csv", rows))
    with pytest.raises(UserError, match=r"absent\.csv"):
        read_predictions(tmp_path / "absent.csv")


def test_write_predictions_round_trip(tmp_path, cv_csv):
    preds = read_predictions(cv_csv)
    again = read_predictions(write_predictions(tmp_path / "copy.csv", preds))
    assert again.class_names == preds.class_names and again.images == preds.images
    np.testing.assert_array_equal(again.y_true, preds.y_true)
    np.testing.assert_array_equal(again.folds, preds.folds)
    np.testing.assert_allclose(again.probs, preds.probs)


def test_summary_pooled_equals_sklearn_from_csv(tmp_path):
    path = _write_csv(tmp_path / "p.csv", _rows(test_rows=15))
    summary = summarize(read_predictions(path), n_boot=200, seed=1)
    # independent reading of the CSV: out-of-fold rows are those with fold >= 0
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if int(r["fold"]) >= 0]
    y = np.array([CLASSES.index(r["label"]) for r in rows])
    p = np.array([[float(r[f"prob_{c}"]) for c in CLASSES] for r in rows])
    pred = p.argmax(axis=1)
    pooled = summary["pooled"]
    assert summary["scope"] == "out_of_fold" and pooled["n"] == 60 and summary["n_cases"] == 75
    assert pooled["auc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr"))
    assert pooled["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert pooled["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert pooled["mcc"] == pytest.approx(skm.matthews_corrcoef(y, pred))
    assert pooled["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    for name in ("auc", "accuracy", "balanced_accuracy"):
        low, high = pooled["ci"][name]
        assert low <= pooled[name] <= high
    fold_aucs = [m["auc"] for m in summary["per_fold"]]
    assert [m["fold"] for m in summary["per_fold"]] == [0, 1, 2]
    assert summary["across_folds"]["auc"]["mean"] == pytest.approx(np.mean(fold_aucs))
    assert summary["across_folds"]["auc"]["std"] == pytest.approx(np.std(fold_aucs, ddof=1))
    assert summary["test"]["n"] == 15
    # strict JSON: no NaN anywhere
    json.dumps(summary, allow_nan=False)
    assert json.loads(save_summary(tmp_path / "cv_summary.json", summary).read_text(encoding="utf-8")) == summary


def test_summary_single_class_fold_is_json_safe():
    rows = _rows(num_classes=2, n=12, folds=3)
    for row in rows:
        if row["fold"] == 0:
            row["label"] = "normal"
    summary = summarize(predictions_from_rows(rows), n_boot=50)
    assert summary["per_fold"][0]["auc"] is None
    assert summary["across_folds"]["auc"]["n_folds"] == 2
    json.dumps(summary, allow_nan=False)


def test_read_training_log(tmp_path):
    logs = _training_logs(tmp_path, folds=1)
    records = read_training_log(logs["fold_0"])
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"epoch": 0}\nnot json\n{"epoch": 2}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.jsonl: line 2"):
        read_training_log(bad)


def test_write_report(tmp_path, cv_csv):
    pytest.importorskip("matplotlib")
    preds = read_predictions(cv_csv)
    summary = summarize(preds, n_boot=100)
    out_dir = tmp_path / "run"
    written = write_report(out_dir, preds, summary, title="CV report", training_logs=_training_logs(tmp_path))
    assert set(written) == {"markdown", "html", "roc", "pr", "confusion", "calibration", "curves"}
    for path in written.values():
        assert path.exists() and path.stat().st_size > 0 and path.parent == out_dir
    assert written["roc"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = written["markdown"].read_text(encoding="utf-8")
    assert "# CV report" in md and "How to read this report" in md
    assert "Per-fold metrics" in md and "Per-class metrics" in md and "True \\ Predicted" in md
    assert "(roc.png)" in md and "(curves.png)" in md
    auc_low, auc_high = summary["pooled"]["ci"]["auc"]
    assert f"| AUC (ROC) | {summary['pooled']['auc']:.3f} | {auc_low:.3f} – {auc_high:.3f} |" in md
    page = written["html"].read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 5
    assert 'src="http' not in page and "<link" not in page and "<script" not in page
    assert "How to read this report" in page


def test_write_report_binary_with_test_rows(tmp_path):
    pytest.importorskip("matplotlib")
    preds = predictions_from_rows(_rows(num_classes=2, n=40, folds=2, test_rows=10))
    written = write_report(tmp_path, preds, summarize(preds, n_boot=50))
    assert "curves" not in written  # no training logs given
    md = written["markdown"].read_text(encoding="utf-8")
    assert "Sensitivity (benign)" in md and "Test set (fold -1, 10 cases)" in md


def test_a_figure_that_fails_is_one_warning_naming_it(tmp_path, cv_csv, monkeypatch):
    # None in sys.modules makes `import matplotlib` raise ImportError, as a broken install would
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    preds = read_predictions(cv_csv)
    with pytest.warns(UserWarning) as caught:
        written = write_report(tmp_path, preds, summarize(preds, n_boot=0), training_logs=_training_logs(tmp_path))
    messages = [str(w.message) for w in caught]
    for name in ("roc.png", "pr.png", "confusion.png", "calibration.png", "curves.png"):
        assert sum(name in m and "not drawn" in m and "matplotlib" in m for m in messages) == 1, name
    assert set(written) == {"markdown", "html"}
    assert not list(tmp_path.glob("*.png"))
    md = written["markdown"].read_text(encoding="utf-8")
    assert "Training" in md and "AUC (ROC)" in md
    assert "data:image/png" not in written["html"].read_text(encoding="utf-8")


def test_report_html_renders_in_headless_chromium(tmp_path, cv_csv):
    """The page opens offline in a real browser and shows the full-width training curves (skipped without chromium)."""
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no headless chromium on this machine")
    from PIL import Image

    preds = read_predictions(cv_csv)
    written = write_report(tmp_path, preds, summarize(preds, n_boot=0), training_logs=_training_logs(tmp_path))
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1200,5000", f"--screenshot={shot}", written["html"].as_uri()],
                   capture_output=True, timeout=120, check=False)
    image = np.asarray(Image.open(shot).convert("L"))
    assert image.shape == (5000, 1200)
    drawn = np.where(image.min(axis=1) < 200)[0]
    assert drawn.size > 1000  # text and figures, not a blank or error page
    # the widest dark run of a row: the curves figure spans most of the 1100 px content width
    widest = max(np.ptp(np.where(row < 200)[0]) for row in image[drawn] if (row < 200).sum() > 1)
    assert widest > 900
    # the curves are drawn for the page width (14 in at 110 dpi) and shown at 100% of it
    assert Image.open(written["curves"]).size[0] >= 1500
    page = written["html"].read_text(encoding="utf-8")
    assert '<figure class="wide"><img src="data:image/png;base64,' in page and "src=\"http" not in page
    # these logs improve to their last epoch: each fold gets the warning, and a line counts them
    md = written["markdown"].read_text(encoding="utf-8")
    assert md.count("best epoch is the last") == 3 and "in 3 of 3 training run(s)" in md


def test_a_degenerate_interval_is_explained_not_printed_as_certainty():
    from medconvnext.results.metrics import ci_text

    assert ci_text([1.0, 1.0]) == "none (every resample 1.000: too few cases)"
    assert ci_text([0.61, 0.9]) == "0.610 – 0.900" and ci_text([None, None]) == "n/a" and ci_text(None) == "n/a"
