"""Evaluate a trained run on any labelled set: predictions, metrics and the report.

The model is the ensemble of the folds (mean probability) when the run directory is a cross-validation,
else the run's best checkpoint. Output folder (default ``RUN_DIR/eval_<split>``)::

    predictions.csv   image, label, prediction, prob_<class>
    evaluation.json   what was evaluated (run, data, split, models, cases)
    summary.json      metrics with bootstrap CIs (medconvnext.reports.summarize)
    report.md  report.html  roc.png  pr.png  confusion.png  calibration.png
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medconvnext.choices import EvalSplit, choices
from medconvnext.data.datalist import Case, Datalist, load_datalist, same_label
from medconvnext.data.leakage import LeakageReport
from medconvnext.engine.gate import predict_cases
from medconvnext.engine.inference import FoldEnsemble
from medconvnext.errors import UserError
from medconvnext.fileio import set_state, write_json
from medconvnext.reports.run import report_run
from medconvnext.results.calibration import check_calibration_matches, load_calibration
from medconvnext.results.table import write_prediction_table
from medconvnext.rundir import RunDir, RunLock

__all__ = ["EVAL_SPLITS", "EvaluationResult", "evaluate_run_on", "select_cases"]

EVAL_SPLITS = choices(EvalSplit)


@dataclass
class EvaluationResult:
    """Where the evaluation went, what it covered and how it scored."""

    out_dir: Path
    cases: int
    models: int
    summary: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)
    leakage: LeakageReport = field(default_factory=LeakageReport)
    skipped_unlabelled: int = 0


def _describe(runs: Sequence[RunDir], models: int) -> str:
    """What predicted, for the report: a run's best checkpoint, a cv's folds, or an ensemble of runs."""
    if len(runs) > 1:
        return f"the ensemble of {len(runs)} runs ({models} models, mean probability)"
    if runs[0].is_cv():
        return f"the ensemble of its {models} fold models (mean probability)"
    return "its best checkpoint"


def select_cases(datalist: Datalist, split: str, run: RunDir | None = None, ensemble: bool = False) -> list[Case]:
    """The cases of ``split`` by the data's ``split`` column: ``test``, ``val``, ``train`` (rows marked train or
    unmarked) or ``all``. When the data marks no split at all, ``train``/``val`` mean the run's own split
    (its ``splits.json``, for a ``train`` run); for an ``ensemble`` of runs without one common split (``run``
    None) they are refused (UserError), since each run's training cases are another run's validation cases."""
    if split not in EVAL_SPLITS:
        raise UserError(f"--split must be one of {', '.join(EVAL_SPLITS)}, got {split!r}")
    if split == "all":
        return list(datalist.cases)
    marked = any(c.split for c in datalist.cases)
    if ensemble and run is None and not marked and split in ("train", "val"):
        raise UserError(_no_cases_message(datalist, split, marked, run))
    if not marked and split in ("train", "val") and run is not None and run.splits.is_file() and not run.is_cv():
        ids = set(json.loads(run.splits.read_text(encoding="utf-8"))[split])
        chosen = [c for c in datalist.cases if c.case_id in ids]
    elif split == "train":
        chosen = [c for c in datalist.cases if c.split in (None, "train")]
    else:
        chosen = [c for c in datalist.cases if c.split == split]
    if not chosen:
        raise UserError(_no_cases_message(datalist, split, marked, run))
    return chosen


def _split_owner(runs: Sequence[RunDir]) -> RunDir | None:
    """The run whose splits.json stands for all of ``runs``: the only one, or the first when every run is a train
    run with the same splits.json (e.g. seeds of a recipe given one split); None when their splits differ."""
    if len(runs) == 1:
        return runs[0]
    if any(run.is_cv() or not run.splits.is_file() for run in runs):
        return None
    texts = {json.dumps(json.loads(run.splits.read_text(encoding="utf-8")), sort_keys=True) for run in runs}
    return runs[0] if len(texts) == 1 else None


def _no_cases_message(datalist: Datalist, split: str, marked: bool, run: RunDir | None) -> str:
    """Why ``split`` selects nothing, and what to do; never a hint that leads to scoring cases a model trained on.
    ``run`` is None for an ensemble of runs with different splits."""
    why = f"--data {datalist.source}: no {split} cases"
    why += " (its split column marks none)" if marked else " (it has no split column)"
    if run is not None and run.is_cv():
        return (f"{why}. A cv run's honest estimate is its out-of-fold predictions (`medconvnext report "
                f"{run.root}`); to evaluate it on held-out scans, give data whose split column marks them test")
    if run is None and not marked and split in ("train", "val"):
        return (f"{why}. One train run evaluates its own {split} cases (its splits.json); these runs' splits.json "
                "differ, so an ensemble of them has no common set. Add a split column "
                "(train/val/test) and retrain")
    return (f"{why}. Mark the cases `{split}` in a split column (for `test`: cases no model trained or selected on); "
            "--split all scores every case, including training cases")


def _check_labels(ensemble: FoldEnsemble, cases: list[Case], datalist: Datalist) -> None:
    """UserError naming a label of ``cases`` that is not one of the models' classes (with its other spelling)."""
    classes = ensemble.class_names
    unknown = sorted({c.label for c in cases} - set(classes))
    if unknown:
        twin = same_label(unknown[0], classes)  # '00' for the run's '0': one class written two ways
        hint = f"; the run writes it {twin!r}: use that spelling" if twin else ""
        raise UserError(f"--data {datalist.source}: label {unknown[0]!r} is not one of the model's classes "
                        f"({', '.join(classes)}){hint}")


def evaluate_run_on(
    run_dir: str | Path | Sequence[str | Path],
    data: str | Path,
    split: str = "test",
    out: str | Path | None = None,
    device: str = "auto",
    leakage: str = "warn",
    n_boot: int = 1000,
    seed: int = 0,
    tta: bool = False,
) -> EvaluationResult:
    """Predict the labelled ``split`` cases of ``data`` with the run in ``run_dir`` and write the report.

    ``run_dir`` may also be several runs (e.g. the same recipe trained with different seeds): their models
    are ensembled (mean probability), and ``out`` must then be given. ``tta`` averages each model's
    probabilities over the 8 flips of every volume; the report then applies the operating point fitted on the
    runs' held-out predictions made with TTA when they have them (:func:`medconvnext.reports.run.report_run`).
    ``leakage``: what a case sharing a subject or an image with a run's training cases does (``warn``, ``error``
    -> UserError, ``off``; see :mod:`medconvnext.data.leakage`).
    """
    runs = [RunDir(Path(r)) for r in ([run_dir] if isinstance(run_dir, (str, Path)) else run_dir)]
    if not runs:
        raise UserError("evaluate needs at least one run directory")
    for run in runs:
        if not run.root.is_dir() or not (run.is_cv() or run.checkpoint("best").is_file()):
            raise UserError(f"{run.root}: not a run directory (expected cv.json or {run.checkpoint('best').name})")
    if out is None and len(runs) > 1:
        raise UserError("--out is required when several runs are evaluated together")
    out_dir = Path(out) if out is not None else runs[0].root / f"eval_{split}"
    if any(out_dir.resolve() == run.root.resolve() for run in runs):
        raise UserError(f"--out {out_dir}: would overwrite a run's own report; choose another folder")
    # an earlier evaluation is replaced (its files the user did not change); a folder of other files, or a
    # changed file this evaluation would write, is refused before any work
    RunDir(out_dir).check_new(overwrite=True)
    datalist = load_datalist(data, for_training=False)
    chosen = select_cases(datalist, split, _split_owner(runs), ensemble=len(runs) > 1)
    labelled = [c for c in chosen if c.label is not None]
    if not labelled:
        raise UserError(f"--data {datalist.source}: none of the {len(chosen)} {split} case(s) has a label")
    # one run's report applies its calibration.json: one fitted for other weights is refused before any write
    if len(runs) == 1 and runs[0].calibration.is_file():
        check_calibration_matches(load_calibration(runs[0].calibration), runs[0].root, runs[0].calibration)
    # the gate of predict: the same scan checks, leakage audit, and refusal of non-finite probabilities
    gated = predict_cases(labelled, [run.root for run in runs], device=device, tta=tta, leakage=leakage,
                          eval_side=split, check=lambda ensemble: _check_labels(ensemble, labelled, datalist))
    ensemble, probs, report = gated.ensemble, gated.probs, gated.leakage
    classes = ensemble.class_names
    models = len(ensemble.members)
    note = f"{len(labelled)} {split} case(s) of {datalist.source}, predicted by {_describe(runs, models)}"
    note += " with test-time augmentation (8 flips)." if tta else "."
    if len(chosen) > len(labelled):
        note += f" {len(chosen) - len(labelled)} unlabelled case(s) left out."
    if report:
        note += f" Leakage audit: {report.message()}."
    meta = {"runs": [str(run.root) for run in runs], "data": str(data), "split": split, "n_cases": len(labelled),
            "models": models, "tta": tta, "note": note}
    target = RunDir(out_dir)
    with RunLock(out_dir):
        target.prepare_new(overwrite=True, kind="evaluate")  # the earlier evaluation's files, not the user's
        write_prediction_table(target.predictions, [c.images[0] for c in labelled], probs, classes,
                               labels=[c.label for c in labelled])
        write_json(target.evaluation, meta)
        written = report_run(out_dir, n_boot=n_boot, seed=seed, overwrite=True)  # its own folder, just prepared
        set_state(out_dir, "complete")
    return EvaluationResult(out_dir, len(labelled), models, written.summary, written.files, report,
                            len(chosen) - len(labelled))
