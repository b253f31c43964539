"""The one module that knows the file names inside a run directory: :class:`RunDir` owns every one.

Each file a run (train, cv, report, evaluate, pretrain, export) writes is a :class:`RunFile` of :class:`RunDir`, and
writers take its name from there (``run.config``, ``RunDir.report_html.name``); :data:`RUN_FILES` is derived from
them, so a writer cannot add a file that ``--overwrite`` would later take for the user's. Which of those files may be
deleted is decided by the manifest (:mod:`medconvnext.ownership`), never by the names alone.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medconvnext.errors import UserError
from medconvnext.fileio import MANIFEST, read_manifest, set_state, start_manifest
from medconvnext.ownership import (  # noqa: F401 - re-exported: the run's writers import them from here
    LOCK,
    MIN_FREE_BYTES,
    RunLock,
    check_output,
    check_writable,
    plan_removal,
    remove_planned,
    shown,
)

CHECKPOINT_SUFFIX = ".safetensors"
RUN_FILE_PATTERN = re.compile(r"checkpoint_\w+\.(safetensors|json)")  # RunDir.checkpoint(which) and its metadata
RUN_FOLDER_PATTERN = re.compile(r"fold_\d+|repeat_\d+|eval_\w+")  # folds, repeats, evaluate's default output
FOLD_PATTERN = re.compile(r"fold_\d+|repeat_\d+")
TENSORBOARD = "tensorboard"


class RunFile:
    """One file of a run directory: on a :class:`RunDir` it is the path ``root / name``, on the class the
    descriptor itself (``RunDir.config.name == "config.yaml"``)."""

    def __init__(self, name: str, doc: str = "") -> None:
        self.name = name
        self.__doc__ = doc or f"``{name}``"

    def __get__(self, run: RunDir | None, owner: type | None = None) -> Any:
        return self if run is None else run.root / self.name


@dataclass(frozen=True)
class RunDir:
    """Paths of one run folder (a ``train`` run, one fold of a cross-validation, a cv, an ``evaluate`` folder, a
    pretraining run): every file name medconvnext writes into one is a :class:`RunFile` here."""

    root: Path

    # train (every fold of a cv too)
    config = RunFile("config.yaml", "The resolved config.")
    dataset = RunFile("dataset.json", "The cases, classes and the plan.")
    splits = RunFile("splits.json", "train / val (/ test) case ids; a cv's folds.")
    metrics = RunFile("metrics.jsonl", "One record per epoch.")
    val_predictions = RunFile("val_predictions.csv", "The validation cases predicted at the best epoch.")
    val_predictions_tta = RunFile(
        "val_predictions_tta.csv", "The validation cases predicted by the best checkpoint with test-time "
        "augmentation (written once, after the last epoch; deleted whenever a new best checkpoint is saved, so it "
        "never belongs to an older one).")
    progress_plot = RunFile("progress.png", "Training curves, redrawn every epoch.")
    training_state_file = RunFile("training_state.pt", "Optimizer, scheduler, scaler, RNG and epoch for resuming.")
    init_2d_report = RunFile("init_2d.json", "What ``model.init_2d`` loaded into the model.")
    init_report = RunFile("init.json", "What ``model.init`` loaded into the model.")
    # cross-validation (medconvnext.engine.cv)
    cv_params = RunFile("cv.json", "Parameters of a cross-validation run (its presence marks one).")
    done = RunFile("done.json", "Written by the cross-validation when a fold has finished training.")
    oof_predictions = RunFile("oof_predictions.csv", "Every non-test case predicted by the fold that held it out.")
    oof_predictions_tta = RunFile("oof_predictions_tta.csv", "Every fold's ``val_predictions_tta.csv``, collected "
                                  "as ``oof_predictions.csv`` is.")
    test_predictions = RunFile("test_predictions.csv", "The test cases predicted by the ensemble of the folds.")
    summary = RunFile("cv_summary.json", "A cross-validation's metrics (pooled, per fold, test).")
    # the report (medconvnext.reports), of a run, a cv or an evaluate folder
    calibration = RunFile("calibration.json", "Temperature and threshold fitted on held-out predictions (written by "
                          "the report, read by predict).")
    evaluation_summary = RunFile("summary.json", "Metrics summary of a train run's validation set or of an "
                                 "``evaluate`` folder.")
    report_markdown = RunFile("report.md")
    report_html = RunFile("report.html")
    roc_plot = RunFile("roc.png")
    pr_plot = RunFile("pr.png")
    confusion_plot = RunFile("confusion.png")
    calibration_plot = RunFile("calibration.png")
    curves_plot = RunFile("curves.png")
    recalibration_plot = RunFile("calibration_before_after.png")
    # ``evaluate`` output folder
    predictions = RunFile("predictions.csv")
    evaluation = RunFile("evaluation.json", "What was evaluated: the run, the data, the split, the models.")
    # pretraining (medconvnext.engine.pretrain)
    pretrain_options = RunFile("pretrain.json", "The pretraining options (its presence marks a pretraining run).")
    reconstructions = RunFile("reconstructions.png", "Masked inputs and their reconstructions.")
    # export's default outputs (medconvnext.engine.export)
    torchscript = RunFile("model.torchscript.pt")
    onnx = RunFile("model.onnx")
    export_preprocessing = RunFile("model.preprocessing.json", "The preprocessing an exported model expects.")

    @classmethod
    def files(cls) -> list[RunFile]:
        """Every :class:`RunFile` of a run folder."""
        return [f for klass in cls.__mro__ for f in vars(klass).values() if isinstance(f, RunFile)]

    def held_out_predictions(self, tta: bool = False) -> Path:
        """The run's held-out predictions: a cv's out-of-fold table, else a train run's validation table; with
        ``tta``, the ones made with test-time augmentation."""
        if self.is_cv():
            return self.oof_predictions_tta if tta else self.oof_predictions
        return self.val_predictions_tta if tta else self.val_predictions

    def checkpoint(self, which: str) -> Path:
        """``which`` is ``"best"`` or ``"last"`` (or ``"encoder"``: a pretraining run's); see RUN_FILE_PATTERN."""
        return self.root / f"checkpoint_{which}{CHECKPOINT_SUFFIX}"

    def training_state(self) -> Path:
        """Optimizer, scheduler, scaler, RNG and epoch for resuming (next to checkpoint_last)."""
        return self.training_state_file

    def fold(self, index: int, repeat: int | None = None) -> RunDir:
        """``fold_<index>``; with repeated cross-validation ``repeat_<repeat>/fold_<index>``."""
        if repeat is None:
            return RunDir(self.root / f"fold_{index}")
        return RunDir(self.root / f"repeat_{repeat}" / f"fold_{index}")

    def is_evaluation(self) -> bool:
        """An ``evaluate`` output folder (its ``evaluation.json``; before that file: a ``predictions.csv`` without a
        run's validation table). A ``predict --output predictions.csv`` inside a train run does not make it one."""
        return self.evaluation.is_file() or (self.predictions.is_file() and not self.val_predictions.is_file()
                                             and not self.config.is_file())

    def is_cv(self) -> bool:
        return self.cv_params.is_file()

    def folds(self) -> list[tuple[int, int, RunDir]]:
        """(repeat, fold, folder) of every fold of a cross-validation run, in training order."""
        params = json.loads(self.cv_params.read_text(encoding="utf-8"))
        repeats, folds = int(params["repeats"]), int(params["folds"])
        return [(r, i, self.fold(i, r if repeats > 1 else None)) for r in range(repeats) for i in range(folds)]

    def has_manifest(self) -> bool:
        return (self.root / MANIFEST).is_file()

    def is_run(self) -> bool:
        """True when the folder holds the toolkit's manifest, or (written before the manifest) a file that starts a
        medconvnext run or fold folders of one."""
        if not self.root.is_dir():
            return False
        if self.has_manifest():
            return True
        return any((self.root / m).is_file() for m in MARKERS) or any(
            p.is_dir() and RUN_FOLDER_PATTERN.fullmatch(p.name) and RunDir(p).is_run() for p in self.root.iterdir())

    def is_empty(self) -> bool:
        """No folder, or a folder holding nothing but a run lock."""
        return not self.root.is_dir() or all(p.name == LOCK for p in self.root.iterdir())

    def check_foreign(self) -> None:
        """UserError when ``root`` is a file, or a non-empty folder that is not a run: never written into."""
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"--out {self.root}: is a file, not a folder; choose a new or empty folder")
        if not self.is_empty() and not self.is_run():
            names = sorted(p.name + ("/" if p.is_dir() else "") for p in self.root.iterdir() if p.name != LOCK)
            held = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise UserError(f"--out {self.root}: not empty and not a medconvnext run (holds {held}); medconvnext "
                            "never deletes files it did not write: choose a new or empty folder")

    def check_new(self, overwrite: bool, resume_command: str = "medconvnext train --resume") -> None:
        """What :meth:`prepare_new` refuses, checked before any work: a foreign folder (even with ``overwrite``);
        a run without ``overwrite`` (an interrupted one: continue it with ``resume_command``); with ``overwrite``,
        a run written without a manifest, or one where a file the new run would write was changed by the user."""
        check_writable(self.root, "--out")
        self.check_foreign()
        if self.is_empty():
            return
        manifest = read_manifest(self.root)
        if not overwrite:
            if manifest is not None and manifest.get("state") == "running":
                raise UserError(f"--out {self.root}: holds an interrupted run; continue it with "
                                f"`{resume_command} {self.root}` (or choose another --out)")
            raise UserError(f"--out {self.root}: already holds a run; pass --overwrite to replace it")
        if manifest is None:
            raise UserError(f"--out {self.root}: has no {MANIFEST} (written by a medconvnext older than the "
                            "manifest, or not by medconvnext), so nothing in it is known to be medconvnext's to "
                            "delete: choose a new or empty folder, or move its files away yourself")
        _, kept = plan_removal(self.root, is_run_file)
        clash = [p for p in kept if _would_write(p)]
        if clash:
            raise UserError(f"--out {self.root}: {shown(clash)} changed since medconvnext wrote it (or was never "
                            "written by it) and the new run would replace it; --overwrite never does: move it away")

    def prepare_new(self, overwrite: bool, kind: str = "train") -> list[Path]:
        """Create the folder with a fresh manifest; with ``overwrite`` an existing run's files are deleted first
        (only those listed in its manifest with their bytes unchanged, see :meth:`remove_run_files`), and what was
        kept is returned (and named in one warning). Refusals as :meth:`check_new`."""
        self.check_new(overwrite)
        kept = self.remove_run_files() if self.root.is_dir() else []
        if kept:
            warnings.warn(f"{self.root}: deleted the earlier run's files and kept {len(kept)} that medconvnext did "
                          f"not write or that changed since: {shown(kept)}", stacklevel=3)
        start_manifest(self.root, kind)
        set_state(self.root, "running")
        return kept

    def removal_plan(self) -> tuple[list[Path], list[Path]]:
        """(the files :meth:`remove_run_files` would delete, the files it would keep relative to the folder)."""
        return plan_removal(self.root, is_run_file)

    def remove_run_files(self) -> list[Path]:
        """Delete what medconvnext wrote here: every file its manifest lists (and those of the fold and evaluation
        folders registered in it) whose bytes still match, the manifests, leftover temporary files and folders left
        empty by that; anything else stays. Returns what was kept (paths relative to the run)."""
        delete, kept = plan_removal(self.root, is_run_file)
        remove_planned(self.root, delete)
        return kept


# Every name medconvnext writes into a run directory, derived from RunDir (never spelled twice). Ownership is by the
# manifest, not by these names: they say which files a new run would write, so a file the user changed under one of
# them is refused rather than replaced.
RUN_FILES = frozenset(f.name for f in RunDir.files())
# a run's first files: a folder holding one but no manifest was written by a medconvnext older than the manifest
# (or by hand): it is read as a run (report, predict, --resume) but never deleted from
MARKERS = tuple(f.name for f in (RunDir.config, RunDir.dataset, RunDir.cv_params, RunDir.evaluation,
                                 RunDir.pretrain_options))


def is_run_file(name: str) -> bool:
    """A file name some run writes: a :class:`RunFile` or a checkpoint."""
    return name in RUN_FILES or bool(RUN_FILE_PATTERN.fullmatch(name))


def _would_write(relative: Path) -> bool:
    """A kept file under a name a new run writes (in the run or its fold folders; an ``eval_*`` folder is written by
    ``evaluate`` only, which checks its own)."""
    return all(FOLD_PATTERN.fullmatch(part) for part in relative.parts[:-1]) and is_run_file(relative.name)


def fold_checkpoints(path: str | Path) -> list[Path]:
    """The best checkpoint of every fold when ``path`` is a cross-validation run directory, else []."""
    run = RunDir(Path(path))
    if not run.root.is_dir() or not run.is_cv():
        return []
    checkpoints = []
    for _, _, fold in run.folds():
        checkpoint = fold.checkpoint("best")
        if not checkpoint.is_file():
            raise UserError(f"{fold.root}: no {checkpoint.name}; the cross-validation has not finished "
                            "(rerun the same cv command to continue it)")
        checkpoints.append(checkpoint)
    return checkpoints


def glob_fold_checkpoints(path: str | Path) -> list[Path]:
    """Best checkpoints in ``fold_<i>/`` or ``repeat_<r>/fold_<i>/`` below ``path`` (a cross-validation run directory
    without its ``cv.json``, e.g. only the fold folders copied elsewhere), sorted by repeat then fold; [] if none."""
    root = Path(path)
    if not root.is_dir():
        return []
    name = RunDir(root).checkpoint("best").name

    def key(checkpoint: Path) -> tuple[int, int]:
        fold = checkpoint.parent
        repeat = fold.parent.name if fold.parent != root else "repeat_0"
        return int(repeat.rsplit("_", 1)[1]), int(fold.name.rsplit("_", 1)[1])

    found = [p for p in [*root.glob(f"fold_*/{name}"), *root.glob(f"repeat_*/fold_*/{name}")]
             if all(part.rsplit("_", 1)[1].isdigit() for part in p.relative_to(root).parts[:-1])]
    return sorted(found, key=key)


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the best checkpoint of a run directory."""
    path = Path(path)
    if path.is_file():
        return path
    candidate = RunDir(path).checkpoint("best")
    if candidate.is_file():
        return candidate
    raise UserError(f"--model {path}: no checkpoint found (expected a run directory with {candidate.name} or a file)")


def model_checkpoints(model_path: str | Path) -> list[Path]:
    """Best checkpoint of every fold when ``model_path`` is a cross-validation run directory (its ``cv.json``,
    or else the ``fold_*`` / ``repeat_*/fold_*`` folders holding one), else ``[the run's or file's checkpoint]``."""
    return fold_checkpoints(model_path) or glob_fold_checkpoints(model_path) or [find_checkpoint(model_path)]
