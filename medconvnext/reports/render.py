"""Render the evaluation report as Markdown and as a self-contained HTML page.

Both formats come from one list of blocks (heading, paragraph, list, table, image), so they always
say the same thing. The HTML embeds its PNGs as base64 data URIs and its CSS inline: it opens
offline, can be mailed or attached to a ticket as one file, and references nothing external.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from medconvnext.fileio import atomic_write
from medconvnext.reports import plots
from medconvnext.reports.document import Doc, to_html, to_markdown
from medconvnext.reports.operating import criterion_text, section_rows
from medconvnext.reports.summary import summarize
from medconvnext.reports.training_log import read_training_log
from medconvnext.results.calibration import apply_temperature
from medconvnext.results.metrics import SCALAR_METRICS, ci_text
from medconvnext.results.table import TEST_FOLD, Predictions
from medconvnext.rundir import RunDir

__all__ = ["write_report", "REPORT_FILES"]

# The report's files by role; their names are RunDir's (medconvnext.rundir owns every run-file name)
REPORT_FILES = {
    "markdown": RunDir.report_markdown.name,
    "html": RunDir.report_html.name,
    "roc": RunDir.roc_plot.name,
    "pr": RunDir.pr_plot.name,
    "confusion": RunDir.confusion_plot.name,
    "calibration": RunDir.calibration_plot.name,
    "curves": RunDir.curves_plot.name,
    "recalibration": RunDir.recalibration_plot.name,
}

METRIC_LABELS = {
    "auc": "AUC (ROC)",
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "f1": "F1",
    "f1_macro": "F1 (macro)",
    "f1_weighted": "F1 (weighted)",
    "mcc": "MCC",
    "brier": "Brier score",
    "ece": "ECE (15 bins)",
}
FOLD_COLUMNS = ("auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1", "mcc", "brier", "ece")

HOW_TO_READ = [
    "Out-of-fold: in k-fold cross-validation every case is predicted exactly once, by the model of the fold "
    "that did not train on it. Pooling these predictions gives one honest estimate over all cases; the "
    "per-fold rows show how much the estimate moves between training runs.",
    "AUC is the probability that a random case of a class gets a higher score for that class than a random "
    "case of another class (0.5 = chance, 1 = perfect ranking); it does not depend on a threshold. The 95% "
    "confidence interval is a percentile bootstrap over cases: resampling this data set, the AUC fell inside "
    "the interval 95% of the time. A wide interval means too few cases to tell models apart; it does not "
    "cover variation from retraining or from a different population.",
    "Sensitivity/specificity (binary: for the positive class; multiclass: averaged one-vs-rest over classes), "
    "accuracy, F1, MCC and the confusion matrix use the predicted class = the highest probability. Balanced "
    "accuracy averages the per-class recall, so it is not inflated by a majority class.",
    "Calibration: a model is calibrated when, among cases predicted with 80% confidence, about 80% are right. "
    "The reliability diagram plots accuracy against confidence (the diagonal is perfect); ECE is the average "
    "gap, weighted by cases per bin. The Brier score is the mean squared error of the probabilities "
    "(lower is better; binary: (p_positive - y)^2, multiclass: summed over classes).",
]


def _fmt(value: float | int | None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _ci(interval: Sequence[float | None] | None) -> str:
    return ci_text(interval)


def _mean_std(stats: Mapping | None) -> str:
    if not stats or stats["mean"] is None:
        return "n/a"
    if stats["std"] is None:
        return _fmt(stats["mean"])
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def _metric_label(name: str, metrics: Mapping) -> str:
    label = METRIC_LABELS[name]
    positive = metrics.get("positive_class")
    if name in ("sensitivity", "specificity", "f1"):
        return f"{label} ({positive})" if positive else f"{label} (macro)"
    return label


def _metrics_table(doc: Doc, metrics: Mapping, across_folds: Mapping | None, level: float) -> None:
    headers = ["Metric", "Value", f"{level:.0%} CI"] + (["Mean ± std across folds"] if across_folds else [])
    rows = []
    for name in SCALAR_METRICS:
        if name == "f1" and not metrics.get("positive_class"):
            continue  # multiclass "f1" is the macro F1, already a row of its own
        row = [_metric_label(name, metrics), _fmt(metrics[name]), _ci(metrics.get("ci", {}).get(name))]
        if across_folds:
            row.append(_mean_std(across_folds.get(name)))
        rows.append(row)
    doc.table(headers, rows)


def _per_fold_table(doc: Doc, summary: Mapping) -> None:
    headers = ["Fold", "N"] + [METRIC_LABELS[m] for m in FOLD_COLUMNS]
    rows = [[str(m["fold"]), str(m["n"])] + [_fmt(m[c]) for c in FOLD_COLUMNS] for m in summary["per_fold"]]
    across = summary["across_folds"]
    rows.append(["mean ± std", ""] + [_mean_std(across[c]) for c in FOLD_COLUMNS])
    doc.table(headers, rows)


def _per_class_table(doc: Doc, metrics: Mapping) -> None:
    headers = ["Class", "Support", "Precision", "Recall (sensitivity)", "Specificity", "F1", "AUC (one-vs-rest)"]
    rows = [
        [name, str(c["support"]), _fmt(c["precision"]), _fmt(c["recall"]), _fmt(c["specificity"]), _fmt(c["f1"]),
         _fmt(c["auc"])]
        for name, c in metrics["per_class"].items()
    ]
    doc.table(headers, rows)


def _confusion_table(doc: Doc, metrics: Mapping) -> None:
    names = metrics["class_names"]
    headers = ["True \\ Predicted"] + list(names) + ["Total"]
    rows = [[name] + [str(v) for v in row] + [str(sum(row))] for name, row in zip(names, metrics["confusion_matrix"],
                                                                                  strict=True)]
    doc.table(headers, rows)


def _best_epoch_warning(records: Sequence[Mapping], best_epoch: int | None) -> str:
    """A warning when the best validation epoch is the first or the last one (needs at least 2 epochs)."""
    epochs = [r.get("epoch", i + 1) for i, r in enumerate(records)]
    if best_epoch is None or len(epochs) < 2:
        return ""
    if best_epoch == epochs[0]:
        return "⚠ best epoch is the first: training too short to learn, or diverging (check the LR)"
    if best_epoch == epochs[-1]:
        return "⚠ best epoch is the last: still improving, more epochs may help"
    return ""


def _training_table(doc: Doc, logs: Mapping[str, Sequence[Mapping]]) -> None:
    rows = []
    warned = []
    for fold, records in logs.items():
        aucs = [(r.get("val_auc"), r.get("epoch", i)) for i, r in enumerate(records)]
        aucs = [a for a in aucs if isinstance(a[0], (int, float))]
        best = max(aucs, key=lambda a: a[0]) if aucs else None
        last = records[-1] if records else {}
        warning = _best_epoch_warning(records, best[1] if best else None)
        if warning:
            warned.append(fold)
        rows.append([
            fold,
            str(len(records)),
            f"{best[0]:.3f} (epoch {best[1]})" if best else "n/a",
            _fmt(last.get("train_loss") if isinstance(last.get("train_loss"), (int, float)) else None),
            _fmt(last.get("val_loss") if isinstance(last.get("val_loss"), (int, float)) else None),
            warning,
        ])
    doc.table(["Fold", "Epochs", "Best val AUC", "Last train loss", "Last val loss", "Warning"], rows)
    if warned:
        doc.paragraph(f"Warning: in {len(warned)} of {len(logs)} training run(s) ({', '.join(warned)}) the best "
                      "validation epoch is the first or the last one; the model chosen may not be a trained optimum.")


def _draw_figures(run_dir: Path, pooled: Predictions, metrics: Mapping, logs: Mapping,
                  calibration: Mapping | None) -> dict[str, Path]:
    """Draw every applicable figure; returns name -> path. A figure that fails is one warning naming it."""
    y, p, names = pooled.y_true, pooled.probs, pooled.class_names
    jobs = {
        "roc": lambda path: plots.plot_roc(y, p, names, path),
        "pr": lambda path: plots.plot_pr(y, p, names, path),
        "confusion": lambda path: plots.plot_confusion(metrics["confusion_matrix"], names, path),
        "calibration": lambda path: plots.plot_calibration(y, p, path),
    }
    if calibration is not None and calibration.get("temperature_fitted", True) and calibration.get(
            "temperature_applied", True):
        after = apply_temperature(p, calibration["temperature"])
        jobs["recalibration"] = lambda path: plots.plot_recalibration(y, p, after, calibration["temperature"], path)
    if logs:
        jobs["curves"] = lambda path: plots.plot_training_curves(logs, path)
    written = {}
    for name, draw in jobs.items():
        path = run_dir / REPORT_FILES[name]
        try:
            if draw(path) is not None:
                written[name] = path
        except Exception as exc:  # noqa: BLE001 - a figure never stops the report, but is never skipped silently
            warnings.warn(f"report figure {path.name} not drawn: {type(exc).__name__}: {exc}", stacklevel=2)
    return written


FIGURE_CAPTIONS = {
    "roc": "ROC curve(s); the dotted diagonal is chance.",
    "pr": "Precision-recall curve(s); dotted lines mark each class's prevalence (chance level).",
    "confusion": "Confusion matrix: each cell gives its count and its share of the true class (row %: recall).",
    "calibration": "Reliability diagram: accuracy per confidence bin against the diagonal of perfect calibration.",
    "curves": "Training curves per fold: loss (left) and validation metrics (right), per whole epoch.",
    "recalibration": "Reliability before (left) and after (right) temperature scaling, same 15 bins as the ECE.",
}


def _build(title: str, summary: Mapping, figures: Mapping[str, Path], logs: Mapping, note: str) -> Doc:
    doc = Doc()
    pooled = summary["pooled"]
    oof = summary["scope"] == "out_of_fold"
    level = summary["ci_level"]
    doc.heading(1, title)
    folds = [str(m["fold"]) for m in summary["per_fold"]]
    scope = f"out-of-fold predictions of {len(folds)} folds" if oof else "all predictions (no folds)"
    count = f"{pooled['n']} cases" if "n_images" not in pooled else (
        f"{pooled['n']} predictions of {pooled['n_images']} cases (one per repeat)")
    doc.paragraph(
        f"{count} ({scope}); classes: {', '.join(summary['class_names'])}. "
        f"Confidence intervals: percentile bootstrap over cases, {summary['n_boot']} resamples, seed {summary['seed']}."
    )
    if note:
        doc.paragraph(note)
    doc.heading(2, "Pooled out-of-fold metrics" if oof else "Metrics")
    _metrics_table(doc, pooled, summary["across_folds"], level)
    if summary["per_fold"]:
        doc.heading(2, "Per-fold metrics")
        _per_fold_table(doc, summary)
    doc.heading(2, "Per-class metrics (pooled)")
    _per_class_table(doc, pooled)
    doc.heading(2, "Confusion matrix (pooled; rows = true class)")
    _confusion_table(doc, pooled)
    if summary.get("calibration"):
        _calibration_sections(doc, summary["calibration"], figures)
    if summary.get("test"):
        test = summary["test"]
        doc.heading(2, f"Test set (fold {TEST_FOLD}, {test['n']} cases)")
        _metrics_table(doc, test, None, level)
        _confusion_table(doc, test)
    if figures:
        doc.heading(2, "Figures")
        for name in ("roc", "pr", "confusion", "calibration"):
            if name in figures:
                doc.image(figures[name], FIGURE_CAPTIONS[name])
    if logs:
        doc.heading(2, "Training")
        _training_table(doc, logs)
        if "curves" in figures:
            doc.image(figures["curves"], FIGURE_CAPTIONS["curves"], wide=True)
    doc.heading(2, "How to read this report")
    doc.bullets(HOW_TO_READ)
    return doc


def _calibration_sections(doc: Doc, cal: Mapping, figures: Mapping[str, Path]) -> None:
    """Operating point (binary) and post-hoc calibration, from the summary's ``calibration``."""
    op_rows, cal_rows = section_rows(cal)
    fitted = cal.get("temperature_fitted", True)  # False: an ensemble of runs, served uncalibrated
    tta = " --tta" if cal.get("fitted_with_tta") else ""  # the values fitted on TTA predictions serve --tta
    if op_rows:
        op = cal["operating_point"]
        doc.heading(2, "Operating point")
        calibrated = fitted and cal.get("temperature_applied", True)
        doc.paragraph(f"A case is called {op['positive_class']} when its {'calibrated ' if calibrated else ''}"
                      f"probability is at least the threshold, chosen by {criterion_text(op['criterion'])} on the "
                      f"{cal['fitted_on']}; {cal['source']}. `medconvnext predict{tta} --threshold auto` uses this "
                      "threshold.")
        doc.table(["", "Value", "95% CI"], op_rows)
        if cal.get("tta"):
            doc.paragraph(tta_section_text(cal["tta"], op["positive_class"]))
    if not fitted:
        return
    doc.heading(2, "Calibration (temperature scaling)")
    if not cal.get("temperature_applied", True):
        doc.paragraph(f"Temperature scaling was {cal['temperature_note']}; the probabilities are used as the model "
                      "gives them (T = 1). A temperature is fitted only with enough held-out cases of every class, "
                      "and applied only when it improves the negative log-likelihood cross-validated within them.")
        return
    doc.paragraph(f"One temperature T divides the logits (Guo et al. 2017), fitted by minimising the negative "
                  f"log-likelihood on the {cal['fitted_on']}; it never changes the predicted class. "
                  f"Here: {cal['source']}. `medconvnext predict{tta}` applies it (--no-calibrate: raw probabilities).")
    doc.table(["", "Before", "After"], cal_rows)
    if cal.get("tta") and not op_rows:  # more than two classes: a temperature only
        doc.paragraph(tta_section_text(cal["tta"], None))
    if "recalibration" in figures:
        doc.image(figures["recalibration"], FIGURE_CAPTIONS["recalibration"], wide=True)


def tta_section_text(tta: Mapping, positive_class: str | None) -> str:
    """What the run uses with test-time augmentation: the fit on its TTA held-out predictions (``tta`` section)."""
    text = (f"With test-time augmentation (`predict --tta`, `evaluate --tta`) the run uses the same fit on its "
            f"{tta['fitted_on']}: temperature T = {tta['temperature']:.3f}")
    if tta.get("threshold") is not None:
        text += (f", threshold {tta['threshold']:.3f} on the calibrated P({positive_class}) (sensitivity "
                 f"{tta['sensitivity']:.3f}, specificity {tta['specificity']:.3f} on those predictions)")
    return text + "."


def _pooled_predictions(predictions: Predictions, summary: Mapping) -> Predictions:
    """The rows the summary's ``pooled`` metrics describe (out-of-fold rows, or all)."""
    if summary["scope"] == "out_of_fold":
        return predictions.subset(predictions.folds != TEST_FOLD)
    return predictions


def write_report(
    run_dir: str | Path,
    predictions: Predictions,
    summary: Mapping | None = None,
    title: str = "medconvnext evaluation report",
    training_logs: Mapping[str, str | Path] | None = None,
    notes: Sequence[str] = (),
) -> dict[str, Path]:
    """Write ``report.md``, a self-contained ``report.html`` and the PNG figures into ``run_dir``.

    Args:
        run_dir: output folder (created if missing).
        predictions: the predictions table (see :func:`medconvnext.reports.read_predictions`).
        summary: result of :func:`medconvnext.reports.summarize` for these predictions; computed
            (1000 bootstrap resamples, seed 0) when None.
        title: report heading.
        training_logs: fold label (e.g. ``"fold_0"``) -> path of its ``metrics.jsonl``, for the
            training table and ``curves.png``.
        notes: paragraphs shown under the opening paragraph (e.g. how the test set was predicted).

    Returns:
        Written files by kind: ``markdown``, ``html``, ``roc``, ``pr``, ``confusion``, ``calibration``,
        (with a fitted calibration) ``recalibration`` and (with usable logs) ``curves``. A figure that cannot be
        drawn is left out with one warning naming it.

    Raises:
        UserError: a training log cannot be read.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = summary if summary is not None else summarize(predictions)
    logs = {str(fold): read_training_log(path) for fold, path in (training_logs or {}).items()}
    note = " ".join(notes)
    figures = _draw_figures(run_dir, _pooled_predictions(predictions, summary), summary["pooled"], logs,
                            summary.get("calibration"))
    doc = _build(title, summary, figures, logs, note)
    md_path = run_dir / REPORT_FILES["markdown"]
    html_path = run_dir / REPORT_FILES["html"]
    markdown, html = to_markdown(doc), to_html(doc, title)
    atomic_write(md_path, lambda tmp: tmp.write_text(markdown, encoding="utf-8"))
    atomic_write(html_path, lambda tmp: tmp.write_text(html, encoding="utf-8"))
    return {"markdown": md_path, "html": html_path, **figures}
