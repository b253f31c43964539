"""The one module that knows the file names inside a run directory."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from medconvnext.errors import UserError

CHECKPOINT_SUFFIX = ".safetensors"


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
    def test_predictions(self) -> Path:
        return self.root / "test_predictions.csv"

    @property
    def summary(self) -> Path:
        return self.root / "cv_summary.json"

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

    def prepare_new(self, overwrite: bool) -> None:
        """Create the folder; refuse to reuse one that holds a run unless ``overwrite``."""
        if self.root.exists() and any(self.root.iterdir()):
            if not overwrite:
                raise UserError(f"--out {self.root}: already holds a run; pass --overwrite to replace it")
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)


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
