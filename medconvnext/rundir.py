"""The one module that knows the file names inside a run directory."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from medconvnext.errors import UserError

CHECKPOINT_SUFFIX = ".safetensors"
# Every name medconvnext writes into a run directory (train, cv, report, evaluate): ``--overwrite`` deletes only
# these, so a user's own files in the folder survive, and a folder holding none of them is not a run.
RUN_FILES = frozenset({
    "config.yaml", "dataset.json", "splits.json", "metrics.jsonl", "val_predictions.csv", "val_predictions_tta.csv",
    "progress.png", "training_state.pt", "init_2d.json", "init.json", "done.json", "cv.json", "oof_predictions.csv",
    "oof_predictions_tta.csv", "test_predictions.csv", "cv_summary.json", "summary.json", "predictions.csv",
    "evaluation.json",
    # medconvnext.engine.pretrain
    "pretrain.json", "reconstructions.png",
    # medconvnext.reports.render.REPORT_FILES
    "report.md", "report.html", "roc.png", "pr.png", "confusion.png", "calibration.png", "curves.png",
    "calibration_before_after.png", "calibration.json",
    # medconvnext.engine.export default outputs
    "model.torchscript.pt", "model.onnx", "model.preprocessing.json",
})
RUN_FILE_PATTERN = re.compile(r"checkpoint_\w+\.(safetensors|json)|\..+\.tmp")  # checkpoints, atomic-write temps
RUN_FOLDER_PATTERN = re.compile(r"fold_\d+|repeat_\d+|eval_\w+")  # folds, repeats, evaluate's default output
TENSORBOARD = "tensorboard"
MARKERS = ("config.yaml", "dataset.json", "cv.json", "evaluation.json", "pretrain.json")  # a run's first files


@dataclass(frozen=True)
class RunDir:
    """Paths of one training run (a plain ``train`` run, or one fold of a cross-validation)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def dataset(self) -> Path:
        return self.root / "dataset.json"

    @property
    def splits(self) -> Path:
        return self.root / "splits.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def val_predictions(self) -> Path:
        return self.root / "val_predictions.csv"

    @property
    def val_predictions_tta(self) -> Path:
        """The validation cases predicted by the best checkpoint with test-time augmentation (written once, after
        the last epoch; deleted whenever a new best checkpoint is saved, so it never belongs to an older one)."""
        return self.root / "val_predictions_tta.csv"

    def held_out_predictions(self, tta: bool = False) -> Path:
        """The run's held-out predictions: a cv's out-of-fold table, else a train run's validation table; with
        ``tta``, the ones made with test-time augmentation."""
        if self.is_cv():
            return self.oof_predictions_tta if tta else self.oof_predictions
        return self.val_predictions_tta if tta else self.val_predictions

    @property
    def progress_plot(self) -> Path:
        return self.root / "progress.png"

    def checkpoint(self, which: str) -> Path:
        """``which`` is ``"best"`` or ``"last"``."""
        return self.root / f"checkpoint_{which}{CHECKPOINT_SUFFIX}"

    def training_state(self) -> Path:
        """Optimizer, scheduler, scaler, RNG and epoch for resuming (next to checkpoint_last)."""
        return self.root / "training_state.pt"

    def fold(self, index: int, repeat: int | None = None) -> RunDir:
        """``fold_<index>``; with repeated cross-validation ``repeat_<repeat>/fold_<index>``."""
        if repeat is None:
            return RunDir(self.root / f"fold_{index}")
        return RunDir(self.root / f"repeat_{repeat}" / f"fold_{index}")

    # cross-validation (medconvnext.engine.cv) and reports
    @property
    def cv_params(self) -> Path:
        """Parameters of a cross-validation run (its presence marks one)."""
        return self.root / "cv.json"

    @property
    def done(self) -> Path:
        """Written by the cross-validation when a fold has finished training."""
        return self.root / "done.json"

    @property
    def oof_predictions(self) -> Path:
        return self.root / "oof_predictions.csv"

    @property
    def oof_predictions_tta(self) -> Path:
        """Every fold's ``val_predictions_tta.csv``, collected as ``oof_predictions.csv`` is."""
        return self.root / "oof_predictions_tta.csv"

    @property
    def test_predictions(self) -> Path:
        return self.root / "test_predictions.csv"

    @property
    def summary(self) -> Path:
        return self.root / "cv_summary.json"

    @property
    def calibration(self) -> Path:
        """Temperature and threshold fitted on held-out predictions (written by the report, read by predict)."""
        return self.root / "calibration.json"

    @property
    def evaluation_summary(self) -> Path:
        """Metrics summary of a train run's validation set or of an ``evaluate`` folder."""
        return self.root / "summary.json"

    # ``evaluate`` output folder
    @property
    def predictions(self) -> Path:
        return self.root / "predictions.csv"

    @property
    def evaluation(self) -> Path:
        """What was evaluated: the run, the data, the split, the models."""
        return self.root / "evaluation.json"

    def is_cv(self) -> bool:
        return self.cv_params.is_file()

    def folds(self) -> list[tuple[int, int, RunDir]]:
        """(repeat, fold, folder) of every fold of a cross-validation run, in training order."""
        params = json.loads(self.cv_params.read_text(encoding="utf-8"))
        repeats, folds = int(params["repeats"]), int(params["folds"])
        return [(r, i, self.fold(i, r if repeats > 1 else None)) for r in range(repeats) for i in range(folds)]

    def is_run(self) -> bool:
        """True when the folder holds a file that starts a medconvnext run (or fold folders of one)."""
        if not self.root.is_dir():
            return False
        return any((self.root / m).is_file() for m in MARKERS) or any(
            p.is_dir() and RUN_FOLDER_PATTERN.fullmatch(p.name) and RunDir(p).is_run() for p in self.root.iterdir())

    def check_foreign(self) -> None:
        """UserError when ``root`` is a file, or a non-empty folder that is not a run: never written into."""
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"--out {self.root}: is a file, not a folder; choose a new or empty folder")
        if self.root.is_dir() and any(self.root.iterdir()) and not self.is_run():
            names = sorted(p.name + ("/" if p.is_dir() else "") for p in self.root.iterdir())
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise UserError(f"--out {self.root}: not empty and not a medconvnext run (holds {shown}); medconvnext "
                            "never deletes files it did not write: choose a new or empty folder")

    def check_new(self, overwrite: bool) -> None:
        """What :meth:`prepare_new` refuses, checked before any work: a foreign folder (even with ``overwrite``),
        or a folder holding a run without ``overwrite``."""
        self.check_foreign()
        if self.root.is_dir() and any(self.root.iterdir()) and not overwrite:
            raise UserError(f"--out {self.root}: already holds a run; pass --overwrite to replace it")

    def prepare_new(self, overwrite: bool) -> None:
        """Create the folder; with ``overwrite`` an existing run's files are deleted (only those, see
        :data:`RUN_FILES`: anything else in the folder stays). Refusals as :meth:`check_new`."""
        self.check_new(overwrite)
        if self.root.is_dir():
            self.remove_run_files()
        self.root.mkdir(parents=True, exist_ok=True)

    def remove_run_files(self) -> list[Path]:
        """Delete what medconvnext wrote here (run files, checkpoints, fold and evaluation folders, TensorBoard
        logs), recursively; other files and the folders that hold them are kept. Returns what was kept."""
        return _remove_owned(self.root)


def _remove_owned(folder: Path) -> list[Path]:
    kept: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink() or not entry.is_dir():
            if not entry.is_symlink() and (entry.name in RUN_FILES or RUN_FILE_PATTERN.fullmatch(entry.name)):
                entry.unlink()
            else:
                kept.append(entry)
        elif entry.name == TENSORBOARD and all(p.is_file() and p.name.startswith("events.out.tfevents.")
                                               for p in entry.rglob("*") if not p.is_dir()):
            shutil.rmtree(entry)
        elif RUN_FOLDER_PATTERN.fullmatch(entry.name):
            inner = _remove_owned(entry)
            if inner:
                kept += inner
            else:
                entry.rmdir()
        else:
            kept.append(entry)
    return kept


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
