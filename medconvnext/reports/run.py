"""The report of a run directory: a cross-validation, a single ``train`` run, or an ``evaluate`` output folder.

- cross-validation (``cv.json``): ``oof_predictions.csv`` (+ the labelled rows of ``test_predictions.csv``,
  fold -1) -> ``cv_summary.json`` and the report; training curves of every fold;
- ``train`` run (``val_predictions.csv``): the validation predictions of the best epoch -> ``summary.json`` and
  the report; its training curve;
- ``evaluate`` output (``predictions.csv``): those predictions -> ``summary.json`` and the report.
"""

from __future__ import annotations

import csv
import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medconvnext.errors import UserError
from medconvnext.fileio import start_manifest
from medconvnext.reports.operating import calibration_summary, fit_run_calibration
from medconvnext.reports.render import REPORT_FILES, write_report
from medconvnext.reports.summary import save_summary, summarize
from medconvnext.results.calibration import (
    TTA_CALIBRATION_HINT,
    TTA_FITTED_ON,
    TTA_THRESHOLD_NOTE,
    TtaCalibration,
    check_calibration_matches,
    checkpoint_digests,
    ensemble_operating_point,
    load_calibration,
    save_calibration,
)
from medconvnext.results.table import TEST_FOLD, Predictions, predictions_from_rows, read_predictions
from medconvnext.rundir import RunDir, check_output

__all__ = ["RunReport", "concat_predictions", "report_run", "tta_note"]


@dataclass
class RunReport:
    """What :func:`report_run` read and wrote."""

    kind: str  # "cv" | "train" | "evaluate"
    predictions: Predictions
    summary: dict[str, Any]
    summary_path: Path
    files: dict[str, Path] = field(default_factory=dict)


def concat_predictions(parts: list[Predictions]) -> Predictions:
    """Rows of several tables with the same classes, in order."""
    names = parts[0].class_names
    for part in parts[1:]:
        if part.class_names != names:
            raise UserError(f"prediction tables with different classes: {names} and {part.class_names}")
    return Predictions(
        images=[i for p in parts for i in p.images],
        y_true=np.concatenate([p.y_true for p in parts]),
        probs=np.concatenate([p.probs for p in parts]),
        folds=np.concatenate([p.folds for p in parts]),
        class_names=list(names),
    )


def _labelled_test_rows(path: Path) -> tuple[Predictions | None, int]:
    """The labelled rows of ``test_predictions.csv`` as fold -1, and how many rows had no label."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    labelled = [{**r, "fold": str(TEST_FOLD)} for r in rows if (r.get("label") or "").strip()]
    return (predictions_from_rows(labelled, str(path)) if labelled else None), len(rows) - len(labelled)


def report_run(run_dir: str | Path, n_boot: int = 1000, seed: int = 0,
               target_sensitivity: float | None = None, overwrite: bool = False) -> RunReport:
    """(Re)write the summary JSON and ``report.md``/``report.html`` (+ figures) of a run directory.

    A cross-validation (its out-of-fold predictions) or a train run (its validation predictions) also gets its
    post-hoc calibration fitted and written to ``calibration.json``: the temperature and, for two classes, the
    threshold for ``target_sensitivity`` (None: Youden's J); and, when the run has held-out predictions made with
    test-time augmentation, the same fit on those (its ``tta`` section). An ``evaluate`` folder shows what the
    evaluated run's stored calibration and threshold give on its cases (evaluated with TTA: the TTA section's).
    """
    run = RunDir(Path(run_dir))
    if not run.root.is_dir():
        raise UserError(f"{run.root}: no such run directory")
    if target_sensitivity is not None and not 0.0 <= target_sensitivity <= 1.0:
        raise UserError(f"--target-sensitivity must be in [0, 1], got {target_sensitivity}")
    fit = {"target_sensitivity": target_sensitivity}
    _check_outputs(run, overwrite)
    if run.is_cv():
        return _cv_report(run, n_boot, seed, fit)
    if run.is_evaluation():
        meta = {}
        if run.evaluation.is_file():
            meta = json.loads(run.evaluation.read_text(encoding="utf-8"))
        predictions = read_predictions(run.predictions)
        predictions.folds[:] = TEST_FOLD
        # "runs" since evaluate takes several runs; "run" in evaluation folders written before that
        evaluated = meta.get("runs") or [meta.get("run", run.root)]
        names = " + ".join(Path(r).name for r in evaluated)
        title = f"Evaluation: {names} on {meta.get('split', 'the given')} cases"
        notes = [meta["note"]] if meta.get("note") else []
        if len(evaluated) > 1:
            fit = {"ensemble": [Path(r) for r in evaluated], "split": meta.get("split")}
        else:
            stored = RunDir(Path(evaluated[0])).calibration
            fit = {"stored": stored} if stored.is_file() else {}
        fit["tta"] = bool(meta.get("tta"))
        return _write(run, "evaluate", predictions, run.evaluation_summary, title, {}, notes, n_boot, seed, fit)
    if run.val_predictions.is_file():
        predictions = read_predictions(run.val_predictions)
        predictions.folds[:] = TEST_FOLD
        logs = {"train": run.metrics} if run.metrics.is_file() else {}
        notes = ["Validation cases of a single training run, predicted by its best checkpoint. They also chose "
                 "that epoch, so these numbers are somewhat optimistic; use `medconvnext cv` or `evaluate` on "
                 "held-out test cases for an unbiased estimate."]
        return _write(run, "train", predictions, run.evaluation_summary, f"Validation report: {run.root.name}", logs,
                      notes, n_boot, seed, {**fit, "fitted_on": "validation predictions of the best epoch"})
    raise UserError(f"{run.root}: nothing to report (expected a cross-validation with cv.json, a train run with "
                    f"{run.val_predictions.name}, or an evaluate folder with {run.predictions.name})")


def _check_outputs(run: RunDir, overwrite: bool) -> None:
    """Before any work: the report never replaces a file medconvnext did not write (``overwrite``: it may). A run
    from before the manifest gets one, so its report files are known from now on."""
    names = [*REPORT_FILES.values(), run.calibration.name, run.summary.name, run.evaluation_summary.name]
    for name in names:
        check_output(run.root / name, overwrite, "report:")
    if run.is_cv() or run.is_evaluation() or run.val_predictions.is_file():  # never into a folder of other files
        start_manifest(run.root, "cv" if run.is_cv() else "evaluate" if run.is_evaluation() else "train")


def _cv_report(run: RunDir, n_boot: int, seed: int, fit: dict) -> RunReport:
    params = json.loads(run.cv_params.read_text(encoding="utf-8"))
    if not run.oof_predictions.is_file():
        raise UserError(f"{run.oof_predictions}: missing; the cross-validation has not finished (rerun the cv "
                        "command to continue it)")
    oof = read_predictions(run.oof_predictions)
    parts, notes = [oof], []
    folds, repeats = int(params["folds"]), int(params["repeats"])
    if repeats > 1:
        notes.append(f"{repeats} repeats of {folds}-fold cross-validation: every case has one out-of-fold "
                     f"prediction per repeat; fold r*{folds}+i is fold i of repeat r. Confidence intervals "
                     "resample cases (with all their repeats).")
    group_by = params.get("group_by")
    if group_by:
        notes.append(f"Folds grouped by '{group_by}': no {group_by} has cases in two folds.")
    if run.test_predictions.is_file():
        test, unlabelled = _labelled_test_rows(run.test_predictions)
        n_models = folds * repeats
        if test is not None:
            parts.append(test)
            notes.append(f"Test set: {len(test)} cases never used for training or model selection, predicted once "
                         f"by the ensemble of the {n_models} fold models (mean probability).")
        if unlabelled:
            notes.append(f"{unlabelled} unlabelled test case(s) are in test_predictions.csv but not in the metrics.")
    predictions = concat_predictions(parts)
    logs = {fold.root.relative_to(run.root).as_posix(): fold.metrics for _, _, fold in run.folds()
            if fold.metrics.is_file()}
    title = f"Cross-validation report: {run.root.name} ({folds} folds" + (f" x {repeats} repeats)" if repeats > 1
                                                                           else ")")
    return _write(run, "cv", predictions, run.summary, title, logs, notes, n_boot, seed,
                  {**fit, "fitted_on": "out-of-fold predictions"})


def _calibration(run: RunDir, predictions: Predictions, fit: dict, n_boot: int, seed: int
                 ) -> tuple[dict | None, str | None]:
    """Fit (cv / train run) or load (evaluate) the calibration, and what it gives on the pooled predictions;
    or (None, why there is none) for an ensemble of runs without one.

    The summary's ``fitted_with_tta`` says whether the values used were fitted on predictions made with TTA (an
    evaluation with ``--tta`` of a run that has them); a fitted calibration's TTA section is its ``tta``."""
    pooled = predictions.subset(predictions.folds != TEST_FOLD) if (predictions.folds != TEST_FOLD).any() \
        else predictions
    if "ensemble" in fit:
        return _ensemble_calibration(pooled, fit, n_boot, seed)
    with_tta = False
    if "stored" in fit:
        calibration = load_calibration(fit["stored"])
        check_calibration_matches(calibration, Path(fit["stored"]).parent, fit["stored"])
        if calibration.class_names != pooled.class_names:
            return None, None
        served = calibration.for_tta() if fit.get("tta") else None
        calibration, with_tta = (served, True) if served is not None else (calibration, False)
        source = f"the evaluated run's calibration (fitted on its {calibration.fitted_on}), applied to these cases"
    elif "fitted_on" in fit:
        calibration = fit_run_calibration(pooled, fit["fitted_on"], fit.get("target_sensitivity"))
        if calibration is None:
            return None, None
        calibration.tta = _fit_tta_section(run, pooled, fit)
        calibration.models = checkpoint_digests(run.root)
        save_calibration(run.calibration, calibration)
        source = ("fitted on these same predictions: T and the threshold are chosen in-sample, so these numbers are "
                  "optimistic; `evaluate` on held-out test cases gives unbiased ones")
    else:
        return None, None
    summary = calibration_summary(pooled, calibration, source, n_boot, seed)
    summary["fitted_with_tta"] = with_tta
    if calibration.tta is not None and "fitted_on" in fit:
        summary["tta"] = asdict(calibration.tta)
    return summary, None


def _ensemble_calibration(pooled: Predictions, fit: dict, n_boot: int, seed: int) -> tuple[dict | None, str | None]:
    """The operating point of an ensemble of runs on their mean held-out predictions (with TTA when evaluated with
    TTA and every run has them; else the plain ones), and what it gives on the pooled predictions."""
    calibration, why, with_tta = None, None, False
    tta_missing = None
    if fit.get("tta"):
        calibration, tta_missing = ensemble_operating_point(fit["ensemble"], tta=True)
        with_tta = calibration is not None
    if calibration is None:
        calibration, why = ensemble_operating_point(fit["ensemble"])
    if calibration is None or calibration.class_names != pooled.class_names:
        return None, why or "the runs' classes differ from the evaluated ones"
    source = "an ensemble of runs has no stored calibration: its mean probability is used as it is"
    if fit.get("split") == "val":
        source += ("; these are the validation cases the threshold was chosen on, so its sensitivity and "
                   "specificity here are optimistic")
    summary = calibration_summary(pooled, calibration, source, n_boot, seed)
    summary = {**summary, "temperature_fitted": False, "fitted_with_tta": with_tta}
    if tta_missing:  # which run lacks its TTA predictions, for the note
        summary["tta_missing"] = tta_missing
    return summary, None


def _fit_tta_section(run: RunDir, pooled: Predictions, fit: dict) -> TtaCalibration | None:
    """The calibration fitted on the run's held-out predictions made with TTA, as the ``tta`` section; None when the
    run has none (trained before they were written), or (with a warning) when they are not of the same cases."""
    path = run.held_out_predictions(tta=True)
    if not path.is_file():
        return None
    table = read_predictions(path)
    if sorted(zip(table.images, table.y_true.tolist(), strict=True)) != sorted(
            zip(pooled.images, pooled.y_true.tolist(), strict=True)) or table.class_names != pooled.class_names:
        warnings.warn(f"{path}: not the cases and classes of {run.held_out_predictions().name}; no TTA operating "
                      "point fitted (retrain the run, or rerun the cv command, to write it again)", stacklevel=2)
        return None
    fitted = fit_run_calibration(table, fit["fitted_on"] + TTA_FITTED_ON, fit.get("target_sensitivity"))
    return fitted.as_tta_section() if fitted is not None else None


def tta_note(calibration: dict | None) -> str | None:
    """What an evaluation with ``--tta`` says about its operating point: fitted on TTA predictions, or (a run
    without them) chosen without TTA and how to get one; None without an operating point or calibration."""
    if not calibration:
        return None
    if calibration.get("fitted_with_tta"):
        what = "operating point" if calibration.get("operating_point") else "calibration"
        return f"The {what} was fitted on the {calibration['fitted_on']}, as these cases were predicted."
    if not calibration.get("operating_point"):
        return None
    missing = f" (no TTA operating point: {calibration['tta_missing']})" if calibration.get("tta_missing") else ""
    return f"Note: {TTA_THRESHOLD_NOTE}{missing}; the numbers at it below are measured on these cases. To refit " \
           f"it: {TTA_CALIBRATION_HINT}."


def _write(run: RunDir, kind: str, predictions: Predictions, summary_path: Path, title: str, logs: dict,
           notes: list[str], n_boot: int, seed: int, fit: dict | None = None) -> RunReport:
    summary = summarize(predictions, n_boot=n_boot, seed=seed)
    summary["calibration"], missing = _calibration(run, predictions, fit or {}, n_boot, seed)
    if missing:
        summary["operating_point_missing"] = missing
        notes = [*notes, f"No operating point: {missing}."]
    note = tta_note(summary["calibration"]) if (fit or {}).get("tta") else None
    if note and not any(TTA_THRESHOLD_NOTE in n for n in notes):  # folders evaluated before carry it in their note
        notes = [*notes, note]
    save_summary(summary_path, summary)
    files = write_report(run.root, predictions, summary, title=title, training_logs=logs, notes=notes)
    return RunReport(kind, predictions, summary, summary_path, files)
