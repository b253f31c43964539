"""The one module that knows the file names inside a run directory."""

from __future__ import annotations

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

    def fold(self, index: int) -> RunDir:
        return RunDir(self.root / f"fold_{index}")

    def prepare_new(self, overwrite: bool) -> None:
        """Create the folder; refuse to reuse one that holds a run unless ``overwrite``."""
        if self.root.exists() and any(self.root.iterdir()):
            if not overwrite:
                raise UserError(f"--out {self.root}: already holds a run; pass --overwrite to replace it")
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the best checkpoint of a run directory."""
    path = Path(path)
    if path.is_file():
        return path
    candidate = RunDir(path).checkpoint("best")
    if candidate.is_file():
        return candidate
    raise UserError(f"--model {path}: no checkpoint found (expected a run directory with {candidate.name} or a file)")
