"""K-fold cross-validation: one training run per fold, out-of-fold predictions, a test-set fold ensemble, the report.

Layout of the run directory (file names in :mod:`medconvnext.rundir`)::

    RUN_DIR/
      cv.json                 the cross-validation parameters and the resolved config (checked on resume)
      splits.json             per fold: train / val case ids; the test ids; the grouping column and groups
      fold_0/ ... fold_K-1/   a complete ``train`` run each (repeats > 1: repeat_R/fold_I/)
      oof_predictions.csv     image, label, [repeat,] fold, prediction, prob_<class>: every non-test case
                              once (per repeat), predicted by the fold model that held it out
      oof_predictions_tta.csv the same with test-time augmentation (every fold's val_predictions_tta.csv, written
                              once after its last epoch by its best checkpoint): for the operating point of --tta
      test_predictions.csv    test cases, predicted once by the ensemble of all fold models (fold = -1)
      cv_summary.json  report.md  report.html  roc.png  pr.png  confusion.png  calibration.png  curves.png

Within a fold, the held-out fold is the validation set: it selects the best epoch (checkpoint_best) and its
predictions at that epoch are the out-of-fold predictions. This is the usual choice (nnU-Net, most papers);
it makes the pooled estimate slightly optimistic, because the same cases chose the epoch; the test cases,
never used for training or selection, give the unbiased number when there are any.

Re-running the same call on an existing run directory continues it: finished folds are skipped, an
interrupted fold resumes from its last epoch (:func:`medconvnext.engine.trainer.resume`). A finished fold without
its TTA validation predictions (trained before they existed, or stopped before they were written) gets them.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medconvnext.config import Config
from medconvnext.data.datalist import Case, Datalist, load_datalist
from medconvnext.data.splits import Fold, cv_splits, resolve_group_column
from medconvnext.data.validate import validate_datalist
from medconvnext.engine import distributed as dist
from medconvnext.engine.gate import predict_cases
from medconvnext.engine.resume import load_training_state
from medconvnext.engine.setup import audit_training_split, check_training_config, setup_device
from medconvnext.engine.trainer import resume, train
from medconvnext.errors import UserError
from medconvnext.fileio import set_state, start_manifest, write_json
from medconvnext.reports.run import report_run
from medconvnext.results.table import TEST_FOLD, prediction_rows, read_predictions, write_table
from medconvnext.rundir import RunDir, RunLock, check_writable

__all__ = ["CV_FORMAT", "CvResult", "FoldResult", "cross_validate", "cv_params"]

CV_FORMAT = 1
# config fields that may differ when a cross-validation is continued: they change where and how fast it
# runs, not what it computes
OPERATIONAL_FIELDS = ("train.device", "train.tensorboard", "data.num_workers", "data.cache", "data.cache_dir",
                      "data.leakage")


@dataclass
class FoldResult:
    """One fold: where it ran and how its best epoch scored; ``action`` is trained, resumed or skipped."""

    repeat: int
    index: int
    run_dir: Path
    action: str
    best_epoch: int | None
    best_metrics: dict[str, Any]


@dataclass
class CvResult:
    """The whole cross-validation."""

    run_dir: Path
    folds: list[FoldResult]
    summary: dict[str, Any]
    report: dict[str, Path] = field(default_factory=dict)


def cv_params(config: Config, folds: int, repeats: int, group_by: str | None) -> dict[str, Any]:
    """What ``cv.json`` stores and a continued run must match."""
    return {"format": CV_FORMAT, "folds": folds, "repeats": repeats, "group_by": group_by,
            "config": config.to_dict()}


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and value and not prefix.startswith("config.model.args"):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _differences(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    a, b = _flatten(stored), _flatten(wanted)
    ignored = {f"config.{name}" for name in OPERATIONAL_FIELDS}
    keys = [k for k in sorted(set(a) | set(b)) if k not in ignored and a.get(k) != b.get(k)]
    return [f"{k.removeprefix('config.')}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys]


def _splits_document(folds: list[Fold], column: str | None) -> dict[str, Any]:
    return {
        "group_by": column,
        "folds": [f.to_dict() for f in folds],
        "test": folds[0].split.test,
        "groups": folds[0].groups,
    }


def _check_out(run: RunDir, overwrite: bool) -> None:
    """Refuse, before any work, an ``--out`` that holds files medconvnext did not write, or a run of another kind."""
    if run.is_empty():
        check_writable(run.root, "--out")
        return
    if overwrite:  # a foreign folder, one without a manifest, or a changed file the new run would write: refused
        run.check_new(overwrite)
        return
    run.check_foreign()
    if not run.is_cv():
        raise UserError(f"--out {run.root}: holds a train run, not a cross-validation; pass --overwrite to "
                        "replace it or choose another --out")


def _prepare(run: RunDir, params: dict[str, Any], splits: dict[str, Any], overwrite: bool) -> bool:
    """Create the run directory, or check that the existing one is this cross-validation; True when continued."""
    _check_out(run, overwrite)
    if not run.is_empty():
        if overwrite:
            run.prepare_new(overwrite, kind="cv")
        else:
            try:
                stored = json.loads(run.cv_params.read_text(encoding="utf-8"))
                stored_splits = json.loads(run.splits.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise UserError(f"{run.cv_params}: unreadable ({exc}); pass --overwrite to start again") from None
            changed = _differences(stored, params)
            if changed:
                raise UserError(f"--out {run.root}: holds a cross-validation with other parameters "
                                f"({'; '.join(changed[:4])}{'; ...' if len(changed) > 4 else ''}); rerun with the "
                                "same options to continue it, or pass --overwrite to start again")
            if stored_splits.get("folds") != splits["folds"] or stored_splits.get("test") != splits["test"]:
                raise UserError(f"--out {run.root}: the data changed since this cross-validation started (the folds "
                                "differ); pass --overwrite to start again")
            start_manifest(run.root, "cv")  # a cv from before the manifest records what it writes from now on
            set_state(run.root, "running")
            return True
    start_manifest(run.root, "cv")
    set_state(run.root, "running")
    write_json(run.cv_params, params)
    write_json(run.splits, splits)
    return False


def _fold_status(fold: RunDir, epochs: int) -> tuple[str, dict[str, Any] | None]:
    """``done`` (marked), ``finished`` (trained, not yet marked), ``resume`` (interrupted after an epoch) or
    ``new``; with the best epoch's record when known."""
    if fold.done.is_file():
        return "done", json.loads(fold.done.read_text(encoding="utf-8"))
    needed = (fold.config, fold.dataset, fold.splits, fold.training_state())
    if not all(p.is_file() for p in needed):
        return "new", None
    state = load_training_state(fold.training_state())
    if state.get("stopped") or int(state["epoch"]) >= epochs:
        best = state.get("best") or {}
        return "finished", {"best_epoch": best.get("epoch"), "best_metrics": best}
    return "resume", None


def _train_fold(
    config: Config, fold: Fold, run: RunDir, callbacks: Any, log: Callable[[str], None], total: int, repeats: int
) -> FoldResult:
    folder = run.fold(fold.index, fold.repeat if repeats > 1 else None)
    name = folder.root.relative_to(run.root).as_posix()
    position = fold.repeat * (total // repeats) + fold.index + 1
    status, done = _fold_status(folder, config.train.epochs)
    if status in ("done", "finished"):
        extra = ""
        if not folder.val_predictions_tta.is_file():  # trained before the file existed, or stopped before it
            resume(folder.root, device=config.train.device, callbacks=callbacks)  # trains nothing, writes it
            extra = f" (wrote its missing {folder.val_predictions_tta.name}: validation cases predicted with TTA)"
        if status == "finished":
            write_json(folder.done, done)
        log(f"{name} ({position}/{total}): finished earlier, skipped{extra}")
        return FoldResult(fold.repeat, fold.index, folder.root, "skipped", done.get("best_epoch"),
                          done.get("best_metrics", {}))
    if status == "resume":
        log(f"{name} ({position}/{total}): resuming from its last epoch")
        result = resume(folder.root, device=config.train.device, callbacks=callbacks)
        action = "resumed"
    else:
        log(f"{name} ({position}/{total}): training on {len(fold.split.train)} cases, "
            f"validating on {len(fold.split.val)}")
        if folder.root.is_dir():  # the cv's own fold folder, holding only what the user left in it: a run again
            start_manifest(folder.root, "train")
        result = train(config, folder.root, overwrite=True, callbacks=callbacks, split=fold.split, audit=False,
                       validated=True)
        action = "trained"
    done = {"best_epoch": result.best_epoch, "best_metrics": result.best_metrics}
    write_json(folder.done, done)
    return FoldResult(fold.repeat, fold.index, folder.root, action, result.best_epoch, result.best_metrics)


def cross_validate(
    config: Config,
    out: str | Path,
    folds: int = 5,
    repeats: int = 1,
    group_by: str | None = None,
    overwrite: bool = False,
    callbacks: Any = None,
    log: Callable[[str], None] | None = None,
    n_boot: int = 1000,
    target_sensitivity: float | None = None,
) -> CvResult:
    """Stratified (grouped, when a subject column applies) K-fold cross-validation of ``config`` into ``out``.

    Args:
        folds, repeats: K folds, repeated with different shuffles (seed ``train.seed + repeat``).
        group_by: grouping column (default: ``subject`` when the data has one); no group in two folds.
        overwrite: replace an existing run directory; without it an existing cross-validation with the same
            parameters is continued and anything else is refused.
        callbacks: :class:`~medconvnext.engine.trainer.TrainingCallbacks` for every fold's training.
        log: receives one line per fold (what is done with it).
        n_boot: bootstrap resamples of the report's confidence intervals.
        target_sensitivity: the operating point written to ``calibration.json`` (None: Youden's J).

    Under torchrun every rank trains every fold (DDP); rank 0 alone writes ``cv.json``, the pooled tables and the
    report, and the other ranks return a result without summary.
    """
    if not config.data.path:
        raise UserError("data.path is not set: pass --data DIR")
    config.validate()  # before anything is written
    with RunLock(out):  # one writer per run: a second cv (or train) into it is refused, naming this process
        return _cross_validate(config, RunDir(Path(out)), folds, repeats, group_by, overwrite, callbacks,
                               log or (lambda line: None), n_boot, target_sensitivity)


def _cross_validate(config: Config, run: RunDir, folds: int, repeats: int, group_by: str | None, overwrite: bool,
                    callbacks: Any, log: Callable[[str], None], n_boot: int, target_sensitivity: float | None
                    ) -> CvResult:
    _check_out(run, overwrite)
    datalist = load_datalist(config.data.path)

    # the gate: every image is checked before anything is written (folds then reuse the cached results)
    datalist, skipped = validate_datalist(datalist, skip_bad=config.data.skip_bad)
    for problem in skipped:
        warnings.warn(f"skipped bad case: {problem}", stacklevel=2)
    column = resolve_group_column(datalist, group_by)
    fold_list = cv_splits(datalist, folds, config.train.seed, repeats, column)
    params = cv_params(config, folds, repeats, column)
    first_train = [c for c in datalist.cases if c.case_id in set(fold_list[0].split.train)]
    check_training_config(config, datalist, first_train)  # every option, before anything is written
    audit_training_split(config, datalist, fold_list, column)  # before anything is written
    setup_device(config.train.device)  # under torchrun: join the process group now, so that only rank 0 writes
    if dist.is_main():
        _prepare(run, params, _splits_document(fold_list, column), overwrite)
    else:
        log = lambda line: None  # noqa: E731 - rank 0 reports
    dist.barrier()
    results = [_train_fold(config, fold, run, callbacks, log, len(fold_list), repeats) for fold in fold_list]
    if not dist.is_main():  # rank 0 writes the pooled tables and the report
        return CvResult(run.root, results, {}, {})
    _write_oof(run, datalist, fold_list, repeats)
    _write_oof(run, datalist, fold_list, repeats, tta=True)
    test = [c for c in datalist.cases if c.case_id in set(fold_list[0].split.test)]
    if test:
        log(f"test: predicting {len(test)} case(s) with the ensemble of {len(fold_list)} fold models")
        _write_test_predictions(run, datalist, test, config.train.device)
    # its own folder: files of an earlier report it continues are replaced (a cv from before the manifest: all)
    report = report_run(run.root, n_boot=n_boot, seed=0, target_sensitivity=target_sensitivity, overwrite=True)
    set_state(run.root, "complete")
    return CvResult(run.root, results, report.summary, report.files)


# ---------------------------------------------------------------------------------------- prediction tables


def _row(case: Case, probs: Sequence[float], classes: Sequence[str], fold: int, repeat: int | None) -> dict:
    repeats = None if repeat is None else [repeat]
    return prediction_rows([case.images[0]], [probs], classes, [case.label or ""], folds=[fold], repeats=repeats)[0]


def _write_oof(run: RunDir, datalist: Datalist, folds: list[Fold], repeats: int, tta: bool = False) -> Path:
    """Collect every fold's ``val_predictions.csv`` (its best epoch) into ``oof_predictions.csv``; with ``tta``,
    every fold's ``val_predictions_tta.csv`` into ``oof_predictions_tta.csv``."""
    by_id = {c.case_id: c for c in datalist.cases}
    per_repeat = len(folds) // repeats
    rows = []
    for fold in folds:
        folder = run.fold(fold.index, fold.repeat if repeats > 1 else None)
        source = folder.val_predictions_tta if tta else folder.val_predictions
        if not source.is_file():
            raise UserError(f"{source}: missing; rerun the cv command to finish this fold")
        predictions = read_predictions(source)
        if predictions.class_names != datalist.classes:
            raise UserError(f"{source}: classes {predictions.class_names} differ from the data's "
                            f"{datalist.classes}; pass --overwrite to start again")
        if sorted(predictions.images) != sorted(fold.split.val):
            raise UserError(f"{source}: does not hold exactly the fold's validation cases; "
                            "pass --overwrite to start again")
        number = fold.repeat * per_repeat + fold.index
        for case_id, probs in zip(predictions.images, predictions.probs, strict=True):
            rows.append((fold.repeat, by_id[case_id],
                         _row(by_id[case_id], probs, datalist.classes, number, fold.repeat if repeats > 1 else None)))
    order = {c.case_id: i for i, c in enumerate(datalist.cases)}
    rows.sort(key=lambda r: (r[0], order[r[1].case_id]))
    target = run.oof_predictions_tta if tta else run.oof_predictions
    write_table(target, [r[2] for r in rows])
    return target


def _write_test_predictions(run: RunDir, datalist: Datalist, test: list[Case], device: str) -> Path:
    """The test cases predicted by the ensemble of every fold model, through the gate of predict: a fold whose
    training diverged is a UserError naming the scan, never a NaN row in the table."""
    # every fold keeps its own preprocessing; probabilities are the mean over folds (as nnU-Net ensembles folds);
    # leakage "off": the cv audited its test cases against its folds before training (audit_training_split)
    probs = predict_cases(test, [run.root], device=device, leakage="off").probs
    rows = [_row(case, p, datalist.classes, TEST_FOLD, None) for case, p in zip(test, probs, strict=True)]
    write_table(run.test_predictions, rows)
    return run.test_predictions
