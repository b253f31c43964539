"""The one module that knows the file names inside a run directory."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from medconvnext.errors import UserError
from medconvnext.fileio import MANIFEST, matches, read_manifest, set_state, start_manifest

MIN_FREE_BYTES = 16 * 2**20  # below this a run's first checkpoint would not fit: refused before any work

CHECKPOINT_SUFFIX = ".safetensors"
# Every name medconvnext writes into a run directory (train, cv, report, evaluate, pretrain, export). Ownership is by
# the manifest (fileio.MANIFEST: each file written, with its digest), not by these names: they say which files a new
# run would write, so a file the user changed under one of them is refused rather than replaced.
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
RUN_FILE_PATTERN = re.compile(r"checkpoint_\w+\.(safetensors|json)")
TEMP_PATTERN = re.compile(r"\.(.+)\.\w+\.tmp")  # fileio.atomic_write's temporary files (left by a killed write)
RUN_FOLDER_PATTERN = re.compile(r"fold_\d+|repeat_\d+|eval_\w+")  # folds, repeats, evaluate's default output
FOLD_PATTERN = re.compile(r"fold_\d+|repeat_\d+")
TENSORBOARD = "tensorboard"
LOCK = "medconvnext.lock"  # held by the one process writing the run (see RunLock)
# a run's first files: a folder holding one but no manifest was written by a medconvnext older than the manifest
# (or by hand): it is read as a run (report, predict, --resume) but never deleted from
MARKERS = ("config.yaml", "dataset.json", "cv.json", "evaluation.json", "pretrain.json")


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
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise UserError(f"--out {self.root}: not empty and not a medconvnext run (holds {shown}); medconvnext "
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
        _, kept = _plan_removal(self.root)
        clash = [p for p in kept if _would_write(p)]
        if clash:
            raise UserError(f"--out {self.root}: {_shown(clash)} changed since medconvnext wrote it (or was never "
                            "written by it) and the new run would replace it; --overwrite never does: move it away")

    def prepare_new(self, overwrite: bool, kind: str = "train") -> list[Path]:
        """Create the folder with a fresh manifest; with ``overwrite`` an existing run's files are deleted first
        (only those listed in its manifest with their bytes unchanged, see :meth:`remove_run_files`), and what was
        kept is returned (and named in one warning). Refusals as :meth:`check_new`."""
        self.check_new(overwrite)
        kept = self.remove_run_files() if self.root.is_dir() else []
        if kept:
            warnings.warn(f"{self.root}: deleted the earlier run's files and kept {len(kept)} that medconvnext did "
                          f"not write or that changed since: {_shown(kept)}", stacklevel=3)
        start_manifest(self.root, kind)
        set_state(self.root, "running")
        return kept

    def removal_plan(self) -> tuple[list[Path], list[Path]]:
        """(the files :meth:`remove_run_files` would delete, the files it would keep relative to the folder)."""
        return _plan_removal(self.root)

    def remove_run_files(self) -> list[Path]:
        """Delete what medconvnext wrote here: every file its manifest lists (and those of the fold and evaluation
        folders registered in it) whose bytes still match, the manifests, leftover temporary files and folders left
        empty by that; anything else stays. Returns what was kept (paths relative to the run)."""
        delete, kept = _plan_removal(self.root)
        for path in delete:
            path.unlink(missing_ok=True)
        for folder, _, _ in sorted(os.walk(self.root), key=lambda w: -len(Path(w[0]).parts)):
            folder_path = Path(folder)
            if folder_path != self.root and not any(folder_path.iterdir()) and folder_path in _owned_folders(delete):
                folder_path.rmdir()
        return kept


def _plan_removal(root: Path) -> tuple[list[Path], list[Path]]:
    """(files the toolkit may delete under ``root``, every other file relative to ``root``)."""
    delete: list[Path] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        manifest = read_manifest(folder)
        if manifest is None:
            continue
        listed = manifest["files"]
        delete += [folder / rel for rel, entry in listed.items() if matches(folder / rel, entry)]
        delete.append(folder / MANIFEST)
        delete += [p for p in folder.iterdir() if p.is_file() and _is_temp(p.name, listed)]
        stack += [folder / sub for sub in manifest["folders"]
                  if (folder / sub).is_dir() and not (folder / sub).is_symlink()]
    gone = set(delete)
    kept = [Path(d, f).relative_to(root) for d, _, files in os.walk(root) for f in files
            if Path(d, f) not in gone and not (Path(d) == root and f == LOCK)]
    return delete, sorted(kept)


def _owned_folders(deleted: list[Path]) -> set[Path]:
    return {parent for path in deleted for parent in path.parents}


def _is_temp(name: str, listed: dict[str, object]) -> bool:
    match = TEMP_PATTERN.fullmatch(name)
    return bool(match) and (match.group(1) in listed or match.group(1) in RUN_FILES or match.group(1) == MANIFEST
                            or bool(RUN_FILE_PATTERN.fullmatch(match.group(1))))


def _would_write(relative: Path) -> bool:
    """A kept file under a name a new run writes (in the run or its fold folders; an ``eval_*`` folder is written by
    ``evaluate`` only, which checks its own)."""
    return all(FOLD_PATTERN.fullmatch(part) for part in relative.parts[:-1]) and (
        relative.name in RUN_FILES or bool(RUN_FILE_PATTERN.fullmatch(relative.name)))


def _shown(paths: list[Path], limit: int = 5) -> str:
    names = [p.as_posix() for p in paths]
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_writable(path: Path, option: str) -> None:
    """UserError (before any work) when ``path`` (a folder or file to be written) cannot be: its nearest existing
    folder is read-only or not a folder, or its disk is full. Probed by creating a file, as permissions alone lie
    (a read-only mount, root)."""
    path = Path(path)
    existing = path if path.is_dir() else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{option} {path}: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".medconvnext-probe.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"{option} {path}: cannot write in {existing} ({exc.strerror or exc}); "
                        "choose a writable location") from None
    if shutil.disk_usage(existing).free < MIN_FREE_BYTES:
        raise UserError(f"{option} {path}: no space left on the disk of {existing}; free some or choose another disk")


def check_output(path: Path, overwrite: bool, option: str = "--output") -> None:
    """Before any work: refuse to replace an existing file medconvnext did not write (not in its folder's manifest,
    or changed since) unless ``overwrite``; refuse a folder; and an unwritable location."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path}: is a folder; give a file name")
    check_writable(path, option)
    if not path.exists() or overwrite:
        return
    entry = (read_manifest(path.parent) or {"files": {}})["files"].get(path.name)
    if entry is None or not matches(path, entry):
        raise UserError(f"{option} {path}: exists and was not written by medconvnext (or was changed since); "
                        "pass --overwrite to replace it, or choose another name")


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


class RunLock:
    """``LOCK`` in a run folder while one process writes it: a second writer is refused with one line naming the
    holder; a lock left by a process that is gone (same host, pid not alive) is taken over."""

    def __init__(self, root: str | Path, option: str = "--out") -> None:
        self.root, self.option = Path(root), option
        self.path = self.root / LOCK
        self.created = False
        self.held = False

    def __enter__(self) -> RunLock:
        if os.environ.get("RANK", "0") != "0":  # under torchrun rank 0 writes the run, and holds its lock
            return self
        check_writable(self.root, self.option)
        self.created = not self.root.exists()
        self.root.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
            self.held = True
            return self
        self._take_over_if_stale()  # refuses: another process took it in between
        raise UserError(f"{self.option} {self.root}: could not take {self.path}; try again")

    def __exit__(self, *exc: object) -> None:
        if not self.held:
            return
        self.path.unlink(missing_ok=True)
        self.held = False
        if self.created and self.root.is_dir() and not any(self.root.iterdir()):
            self.root.rmdir()  # refused before anything was written: leave no empty folder behind

    def _take_over_if_stale(self) -> None:
        """Delete a lock of a dead process; UserError naming the holder of a live one."""
        try:
            holder = json.loads(self.path.read_text(encoding="utf-8"))
            pid, host = int(holder["pid"]), str(holder["host"])
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError):
            holder, pid, host = {}, -1, "?"
        if host == socket.gethostname() and not _alive(pid):
            self.path.unlink(missing_ok=True)
            return
        raise UserError(f"{self.option} {self.root}: in use by process {pid} on {host} (since "
                        f"{holder.get('started', '?')}); wait for it to finish, or delete {self.path} if that "
                        "process is gone")


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
