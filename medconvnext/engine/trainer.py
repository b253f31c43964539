"""Training: the entry points ``train`` and ``resume``, and the hooks that make the epoch loop a training run.

A run goes through three rooms:

- set-up (:mod:`medconvnext.engine.setup`, :mod:`medconvnext.engine.training_data`): checks, datalist, split,
  plan, run files, the model (built once), datasets and loaders;
- the loop (:mod:`medconvnext.engine.loop`, :mod:`medconvnext.engine.optim`): train steps, optimiser, schedule,
  EMA, exact resume;
- evaluation (:mod:`medconvnext.engine.validation`): the validation of every epoch and the choice of the best.

This module wires them: :class:`_RunHooks` seeds each epoch's augmentation, validates, keeps the best epoch, saves
checkpoints and the training state, and logs (metrics.jsonl, progress.png, TensorBoard, the caller's callbacks).

When the last epoch is done (and the best checkpoint is final) the validation cases are predicted once more by the
best checkpoint with test-time augmentation (``val_predictions_tta.csv``), for the operating point that ``--tta``
uses. The file is deleted before a new best checkpoint is saved, so it never belongs to an older one; a finished
run without it (trained before it existed, or stopped before it was written) gets it from ``resume``.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from medconvnext.config import Config
from medconvnext.data.splits import Split
from medconvnext.engine import distributed as dist
from medconvnext.engine.checkpoint import save_checkpoint, unwrap_model
from medconvnext.engine.devices import as_model_input, autocast, enable_fast_kernels
from medconvnext.engine.ema import recompute_batchnorm
from medconvnext.engine.feeding import seed_epoch
from medconvnext.engine.loop import EpochHooks, EpochStats, Loop, build_loop, commit_epoch, resume_point, run_epochs
from medconvnext.engine.model_setup import init_weights
from medconvnext.engine.optim import param_groups, warmup_cosine
from medconvnext.engine.provenance import environment_info
from medconvnext.engine.seeding import seed_everything
from medconvnext.engine.setup import (
    RunSetup,
    audit_training_split,
    prepare_resume,
    prepare_training,
    run_plan,
)
from medconvnext.engine.steps import ClassificationStep, classification_step
from medconvnext.engine.training_data import TrainingData, training_data
from medconvnext.engine.validation import (
    is_better,
    predict_loader,
    validate_loader,
    validate_run,
    warn_undefined_auc,
    write_val_predictions,
    write_val_predictions_tta,
)
from medconvnext.errors import UserError
from medconvnext.fileio import record_many, remove, set_state, start_manifest
from medconvnext.models import apply_memory_format, model_memory_format
from medconvnext.reports.plots import plot_training_curves, preload
from medconvnext.rundir import TENSORBOARD, RunDir, RunLock

__all__ = [
    "SilentCallbacks", "TrainResult", "TrainingCallbacks", "resume", "train",
    # names this module held before the split, still importable from here (new code imports them from their home)
    "audit_training_split", "validate_loader", "validate_run", "param_groups",
    "predict_loader", "run_plan", "seed_everything", "warmup_cosine",
]


class TrainingCallbacks(Protocol):
    """What the trainer reports while it runs (the CLI renders it; tests may ignore it).

    A callbacks object may also have ``on_plan(plan: dict)``, called once before the first epoch with
    :func:`medconvnext.engine.setup.run_plan`'s description of the run.
    """

    def on_start(self, total_epochs: int, steps_per_epoch: int) -> None: ...
    def on_step(self, epoch: int, step: int, loss: float) -> None: ...
    def on_epoch_end(self, record: dict[str, Any]) -> None: ...


class SilentCallbacks:
    """Callbacks that do nothing."""

    def on_start(self, total_epochs: int, steps_per_epoch: int) -> None:
        pass

    def on_step(self, epoch: int, step: int, loss: float) -> None:
        pass

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        pass


@dataclass
class TrainResult:
    """Where the run went and how the best epoch scored."""

    run_dir: Path
    best_epoch: int
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    epochs_run: int = 0  # by this call: 0 when a finished run was resumed only to write its TTA predictions


def train(
    config: Config,
    out: str | Path,
    overwrite: bool = False,
    callbacks: TrainingCallbacks | None = None,
    split: Split | None = None,
    audit: bool = True,
    validated: bool = False,
) -> TrainResult:
    """Train ``config.model`` on ``config.data.path`` into the run directory ``out``.

    Args:
        split: train/val/test case ids to use instead of :func:`~medconvnext.data.splits.train_val_split`
            (e.g. one fold of a cross-validation); ``val`` is the model-selection set.
        audit: run the leakage audit (``data.leakage``: warn, error or off) on the split before training;
            the cross-validation audits all folds at once and turns it off here.
        validated: the caller has validated the data and warned about skipped cases (the cross-validation);
            the check still runs (from the cache) to leave out the same bad cases, without warning again.

    Raises:
        UserError: a bad image (named, with the reason) unless ``data.skip_bad``; ``out`` not empty and not a
            run, or a run without ``overwrite``; before anything is written.
    """
    config.validate()  # a config built in Python is checked like a YAML one, before anything is written
    with RunLock(out):  # one writer per run: a second train/resume into it is refused, naming this process
        setup = prepare_training(config, out, overwrite, split, audit, validated)
        init_weights(setup.model, setup.config, setup.run)
        return _fit(setup, callbacks)


def resume(
    run_dir: str | Path,
    epochs: int | None = None,
    device: str | None = None,
    callbacks: TrainingCallbacks | None = None,
) -> TrainResult:
    """Continue the run in ``run_dir`` from its last completed epoch, with the run's own config.yaml.

    ``epochs`` extends (or shortens) the run; the cosine schedule is then recomputed for the new
    total from the current step on. ``device`` may move the run to another device. A run killed
    before finishing its first epoch starts again from epoch 1. A finished run without
    ``val_predictions_tta.csv`` (trained before it was written, or stopped between its last epoch and that
    file) trains nothing: its validation cases are predicted with TTA by the best checkpoint, and that is all.

    Raises:
        UserError: not a run directory; its data changed and is now bad; the run already finished.
    """
    with RunLock(run_dir, "--resume"):
        return _resume(prepare_resume(run_dir, epochs, device), callbacks)


def _resume(setup: RunSetup, callbacks: TrainingCallbacks | None) -> TrainResult:
    state = setup.state
    if state is not None and _finished_without_tta(setup):
        _write_tta(setup)
        return TrainResult(setup.run.root, state["best"]["epoch"], state["best"], list(state["history"]), 0)
    if setup.state is None:  # killed before its first epoch ended: it starts again, from the same weights
        init_weights(setup.model, setup.config, setup.run)
    return _fit(setup, callbacks)


def _finished_without_tta(setup: RunSetup) -> bool:
    """The run has trained all its epochs (or stopped early) and has a best checkpoint, but no TTA predictions."""
    state = setup.state
    if state is None or not state.get("best") or setup.run.val_predictions_tta.is_file():
        return False
    # --epochs below the epochs already run was refused by prepare_resume
    return bool(state.get("stopped")) or int(state["epoch"]) == setup.config.train.epochs


def _write_tta(setup: RunSetup) -> None:
    """``val_predictions_tta.csv`` of the run's best checkpoint (all ranks predict, rank 0 writes)."""
    by_id = {c.case_id: c for c in setup.datalist.cases}
    cases = [by_id[i] for i in setup.split.val]
    if cases:  # a run always validates; nothing to predict otherwise
        write_val_predictions_tta(setup.run, cases, setup.datalist.classes, setup.device)


def _fit(setup: RunSetup, callbacks: TrainingCallbacks | None) -> TrainResult:
    """Build the data and the loop, restore the training state when resuming, and run the remaining epochs."""
    config, run, device = setup.config, setup.run, setup.device
    cfg = config.train
    callbacks = callbacks if callbacks is not None and dist.is_main() else SilentCallbacks()
    if dist.is_main():
        by_id = {c.case_id: c for c in setup.datalist.cases}
        warn_undefined_auc([by_id[i] for i in setup.split.val], cfg.select)
    generator = torch.Generator().manual_seed(cfg.seed)
    data = training_data(setup, generator)
    enable_fast_kernels(device)
    apply_memory_format(setup.model, device, setup.plan.input_size)  # the layout measured fastest here
    step = classification_step(cfg, data.class_counts, device, generator, setup.model, data.augment)
    loop = build_loop(setup.model, cfg, device, step, len(data.train_loader), generator, data.train_transform)
    start_epoch = resume_point(loop, setup.state, run, cfg.epochs)
    hooks = _RunHooks(setup, data, step, callbacks)
    if hasattr(callbacks, "on_plan"):  # optional hook: what is about to run (the CLI's summary panel, trackers)
        callbacks.on_plan(run_plan(setup, unwrap_model(loop.model), len(data.train_loader), start_epoch))
    callbacks.on_start(cfg.epochs, len(data.train_loader))
    if dist.is_main():
        start_manifest(run.root, "train")  # a run from before the manifest records what it writes from now on
        set_state(run.root, "running")  # stays so if interrupted: a rerun of the command then says --resume
    try:
        run_epochs(loop, data.train_loader, range(start_epoch, cfg.epochs + 1), hooks)
    finally:
        hooks.close()
    epochs_run = len(loop.history) - (start_epoch - 1)  # none when an early-stopped run is resumed
    if epochs_run or not run.val_predictions_tta.is_file():
        _write_tta(setup)  # the best checkpoint is final now
    if dist.is_main():
        set_state(run.root, "complete")
    return TrainResult(run.root, loop.best["epoch"], loop.best, loop.history, epochs_run)


class _RunHooks(EpochHooks):
    """The training run around the loop: per-epoch seeding, validation, selection, checkpoints and logs."""

    def __init__(self, setup: RunSetup, data: TrainingData, step: ClassificationStep,
                 callbacks: TrainingCallbacks) -> None:
        self.setup, self.data, self.step, self.callbacks = setup, data, step, callbacks
        self.cfg = setup.config.train
        self.meta = _checkpoint_meta(setup)
        self.tensorboard = (_TensorBoard(setup.run.root / TENSORBOARD)
                            if self.cfg.tensorboard and dist.is_main() else None)
        self.last_plot = 0.0
        try:
            preload()  # before the first epoch, so that a Ctrl-C cannot land in a lazy import (see preload)
        except ImportError:
            pass  # the first figure's warning says what is missing

    def on_epoch_start(self, loop: Loop, epoch: int) -> None:
        seed_epoch(self.cfg.seed, epoch, self.data.train_loader, loop.train_transform, self.step.augment)

    def on_step(self, loop: Loop, epoch: int, step: int, loss: float) -> None:
        self.callbacks.on_step(epoch, step, loss)

    def on_epoch_end(self, loop: Loop, stats: EpochStats) -> None:
        record, val = self._validate(loop, stats)
        loop.history.append(record)
        improved = self.cfg.select == "last" or loop.best is None or is_better(record, loop.best)
        if improved:
            loop.best = record
        patience = self.cfg.early_stopping_patience
        loop.stopped = patience is not None and stats.epoch - loop.best["epoch"] >= patience
        if dist.is_main():
            self._checkpoint(loop, stats.epoch, improved, val)
            self._log(loop, stats.epoch)
        dist.barrier()
        self.callbacks.on_epoch_end({**record, "best_epoch": loop.best["epoch"]})

    def _validate(self, loop: Loop, stats: EpochStats) -> tuple[dict[str, Any], dict[str, Any]]:
        """Evaluate the validation cases; returns (the epoch's metrics record, the validation outputs)."""
        if loop.ema is not None and self.data.bn_loader is not None:
            with autocast(loop.device, loop.amp):
                recompute_batchnorm(loop.eval_model, self._bn_inputs(loop))
        dist.broadcast_buffers(loop.eval_model)  # evaluate with the buffers that rank 0 saves
        val = validate_loader(loop.eval_forward, self.data.val_loader, loop.device, self.cfg.amp,
                       self.setup.datalist.classes, self.step.loss_fn, self.data.tiling)
        elapsed = time.perf_counter() - stats.started
        record = {
            "epoch": stats.epoch,
            "train_loss": stats.loss,
            "val_loss": val["loss"],
            "val_auc": val["metrics"]["auc"],
            "val_accuracy": val["metrics"]["accuracy"],
            "val_balanced_accuracy": val["metrics"]["balanced_accuracy"],
            "lr": max(group["lr"] for group in loop.optimizer.param_groups),  # the peak (head) lr under layer_decay
            "epoch_time_s": round(elapsed, 3),
            "train_volumes_per_s": round(stats.seen / elapsed, 3) if elapsed > 0 else None,
            # time waiting for the next training batch / time of the training loop (this process)
            "data_wait_share": round(stats.data_wait_share, 4) if stats.data_wait_share is not None else None,
        }
        return record, val

    def _bn_inputs(self, loop: Loop) -> Iterator[torch.Tensor]:
        """The fixed training batches, as the model takes them."""
        assert self.data.bn_loader is not None
        memory_format = model_memory_format(loop.eval_model)
        for batch in self.data.bn_loader:
            yield as_model_input(batch["image"], loop.device, memory_format)

    def _checkpoint(self, loop: Loop, epoch: int, improved: bool, val: dict[str, Any]) -> None:
        """Checkpoints, then the training state (the commit point), then the metrics line."""
        run, classes = self.setup.run, self.setup.datalist.classes
        meta = {**self.meta, "epoch": epoch, "metrics": loop.history[-1]}
        save_checkpoint(run.checkpoint("last"), loop.eval_model, meta)
        if improved:
            # the TTA predictions belong to the best checkpoint: gone before it changes, rewritten after the last epoch
            remove(run.val_predictions_tta)
            save_checkpoint(run.checkpoint("best"), loop.eval_model, meta)
            write_val_predictions(run.val_predictions, val, classes)
        commit_epoch(loop, run, epoch)

    def _log(self, loop: Loop, epoch: int) -> None:
        """TensorBoard scalars, and progress.png at most once a minute (and after the last epoch)."""
        if self.tensorboard is not None:
            self.tensorboard.log(loop.history[-1])
        if time.monotonic() - self.last_plot > 60 or epoch == self.cfg.epochs or loop.stopped:
            _plot_progress(self.setup.run, loop.history)
            self.last_plot = time.monotonic()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def _checkpoint_meta(setup: RunSetup) -> dict[str, Any]:
    """What every checkpoint of the run records beside the weights (the epoch and its metrics are added)."""
    return {
        "model": setup.model.model_args,
        "class_names": setup.datalist.classes,
        "preprocessing": setup.plan.to_dict(),
        "inference": dataclasses.asdict(setup.config.inference),
        "environment": environment_info(),
        # the layout it trained in (provenance; checkpoints are stored contiguous, predict picks its own)
        "memory_format": ("channels_last" if model_memory_format(setup.model) == torch.channels_last_3d
                          else "contiguous"),
    }


def _plot_progress(run: RunDir, history: list[dict[str, Any]]) -> None:
    """progress.png (loss and validation curves); a failure is one warning naming the figure, never silent."""
    try:
        plot_training_curves({"run": history}, run.progress_plot)
    except Exception as exc:  # noqa: BLE001 - a figure must never stop a training
        warnings.warn(f"figure {run.progress_plot} not drawn: {type(exc).__name__}: {exc}", stacklevel=2)


class _TensorBoard:
    """Scalars of each epoch record, when tensorboard is installed."""

    def __init__(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("train.tensorboard: tensorboard is not installed (pip install tensorboard)") from None
        self.writer = SummaryWriter(str(log_dir))

    def log(self, record: dict[str, Any]) -> None:
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, record["epoch"])

    def close(self) -> None:
        self.writer.close()
        # the event files are appended to as training goes: recorded in the run's manifest once closed
        log_dir = Path(self.writer.log_dir)
        record_many([p for p in log_dir.rglob("*") if p.is_file()], log_dir.parent)
