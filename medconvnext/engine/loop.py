"""The one epoch loop of ``train`` and ``pretrain``: train steps over a loader, with hooks for what happens around them.

The shape follows nnU-Net's trainer hooks, much shorter; what one batch computes is the loop's :class:`Step`
(:mod:`medconvnext.engine.steps`, as timm's ``TrainingTask``): classification (MIL bags included) for ``train``,
FCMAE's masked reconstruction for ``pretrain``::

    run_epochs(loop, loader, epochs, hooks)
        for each epoch (until loop.stopped):
            hooks.on_epoch_start(loop, epoch)          seed the epoch's augmentation, the sampler's epoch
            train_epoch(loop, loader, ...)             per batch: loop.step.prepare, loop.step.loss (autocast),
                hooks.on_step(loop, epoch, step, loss)     backward; an optimizer step every ``accumulate``
                                                           batches (AMP scaler, clipping, schedule, EMA update)
            hooks.on_epoch_end(loop, EpochStats)       validation, model selection, checkpoints, logging

:class:`Loop` is everything the loop mutates; :func:`loop_state` / :func:`restore_loop` turn it into the plain
``training_state.pt`` values and back, so a resumed run continues bit for bit (:func:`resume_point` restores and
trims ``metrics.jsonl``, :func:`commit_epoch` saves). :func:`build_loop` assembles a ``Loop`` from the config
(DDP, the optimiser and schedule of :mod:`medconvnext.engine.optim`, the AMP scaler; for ``train`` also EMA and
``torch.compile``: see :class:`LoopRecipe`); ``bench/recipe_search.py`` builds one by hand and runs the same loop.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from medconvnext.config import TrainConfig
from medconvnext.engine import distributed as dist
from medconvnext.engine.checkpoint import atomic_write, unwrap_model
from medconvnext.engine.devices import autocast, needs_grad_scaler
from medconvnext.engine.ema import ModelEma
from medconvnext.engine.feeding import DataWait
from medconvnext.engine.optim import ADAMW_BETAS, make_optimizer, make_schedule
from medconvnext.engine.resume import rng_states, save_training_state, set_rng_states
from medconvnext.engine.steps import Step
from medconvnext.errors import UserError
from medconvnext.fileio import append_text
from medconvnext.rundir import RunDir

__all__ = ["Batches", "EpochHooks", "EpochStats", "Loop", "LoopRecipe", "build_loop", "commit_epoch", "loop_state",
           "restore_loop", "resume_point", "run_epochs", "train_epoch"]


class Batches(Protocol):
    """What the loop trains on: a DataLoader, or anything sized that yields the dicts the loop's step takes
    (``image`` (N, C, D, H, W), MIL bags (N, K, C, D, H, W); ``label`` (N,) integer classes for classification).
    The length is needed: the last batch flushes gradient accumulation."""

    def __iter__(self) -> Iterator[dict[str, Any]]: ...
    def __len__(self) -> int: ...


@dataclass
class Loop:
    """Everything the epoch loop mutates (and ``training_state.pt`` saves), its step and the optimisation's settings."""

    model: nn.Module  # possibly DDP / compiled; unwrap_model() gives the plain module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler  # stepped once per optimizer step
    scaler: torch.amp.GradScaler  # disabled (a pass-through) unless AMP on CUDA needs it
    ema: ModelEma | None
    step: Step  # what one batch computes: classification (MIL bags too) or masked reconstruction
    generator: torch.Generator  # the loader's order and the mixing draws; saved with the RNG states
    device: torch.device
    train_transform: Any = None  # the loader's random transforms, re-seeded per epoch by the trainer's hook
    amp: bool = False  # mixed precision (train.amp; only on CUDA)
    accumulate: int = 1  # optimizer steps every N batches (train.accumulate)
    clip_grad_norm: float | None = None
    compile: bool = False  # evaluate with a torch.compile'd model too (train.compile)
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    stopped: bool = False
    _compiled_eval: nn.Module | None = None

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and saved: the EMA when on, else the trained ones."""
        return self.ema.module if self.ema is not None else unwrap_model(self.model)

    @property
    def eval_forward(self) -> nn.Module:
        """What evaluation runs: ``eval_model``, compiled (once; it shares the weights) under ``train.compile``."""
        if not self.compile:
            return self.eval_model
        if self._compiled_eval is None:
            self._compiled_eval = torch.compile(self.eval_model)
        return self._compiled_eval


@dataclass
class EpochStats:
    """What :func:`run_epochs` measured of one epoch's training, for ``on_epoch_end``."""

    epoch: int
    loss: float  # mean training loss per volume, over all ranks
    seen: int  # volumes trained on, all ranks
    started: float  # time.perf_counter() before on_epoch_start
    data_wait_share: float | None  # share of the training loop spent waiting for batches (this process)


class EpochHooks:
    """What happens around the training of each epoch; every hook does nothing unless overridden."""

    def on_epoch_start(self, loop: Loop, epoch: int) -> None:
        """Before the first batch (seed the epoch's random augmentation, set the sampler's epoch)."""

    def on_step(self, loop: Loop, epoch: int, step: int, loss: float) -> None:
        """After each batch (``step`` from 1; ``loss`` of this batch on this rank)."""

    def on_epoch_end(self, loop: Loop, stats: EpochStats) -> None:
        """After the last batch: validation, model selection, checkpoints, logs; may set ``loop.stopped``."""


def run_epochs(loop: Loop, loader: Batches, epochs: Iterable[int], hooks: EpochHooks) -> None:
    """Train ``loop`` over ``loader`` once per epoch of ``epochs`` until ``loop.stopped``, calling ``hooks``."""
    for epoch in epochs:
        if loop.stopped:
            break
        started = time.perf_counter()
        hooks.on_epoch_start(loop, epoch)
        wait = DataWait()
        loss, seen = train_epoch(loop, loader, partial(hooks.on_step, loop, epoch), wait)
        hooks.on_epoch_end(loop, EpochStats(epoch, loss, seen, started, wait.share))


def train_epoch(
    loop: Loop,
    loader: Batches,
    on_step: Callable[[int, float], None],
    wait: DataWait | None = None,
) -> tuple[float, int]:
    """One pass over ``loader``; returns (mean loss over all ranks, items (volumes, bags) seen by all ranks).

    ``on_step(step, loss)`` follows every batch; ``wait`` accumulates the time spent waiting for batches.
    """
    loop.model.train()
    total, seen = 0.0, 0
    loop.optimizer.zero_grad(set_to_none=True)
    for step, batch in enumerate((wait or DataWait()).iterate(loader), start=1):
        loss, count = _train_step(loop, batch)
        if step % loop.accumulate == 0 or step == len(loader):
            optimizer_step(loop)
        total += loss.item() * count
        seen += count
        on_step(step, loss.item())
    total, seen_all = dist.sum_across_ranks([total, float(seen)])
    return total / max(1.0, seen_all), int(seen_all)


def _train_step(loop: Loop, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
    """Forward and backward of one batch through ``loop.step`` (gradients accumulate); returns (loss, items)."""
    inputs = loop.step.prepare(batch, loop.device)
    with autocast(loop.device, loop.amp):
        loss, count = loop.step.loss(loop.model, inputs)
    loop.scaler.scale(loss / loop.accumulate).backward()
    return loss, count


def optimizer_step(loop: Loop) -> None:
    """Step the optimizer on the accumulated gradients, then the schedule and the EMA."""
    if loop.clip_grad_norm is not None:
        loop.scaler.unscale_(loop.optimizer)  # clip the true gradients, not the loss-scaled ones
        torch.nn.utils.clip_grad_norm_(loop.model.parameters(), loop.clip_grad_norm)
    loop.scaler.step(loop.optimizer)
    loop.scaler.update()
    loop.optimizer.zero_grad(set_to_none=True)
    loop.scheduler.step()
    if loop.ema is not None:
        loop.ema.update(unwrap_model(loop.model))


@dataclass(frozen=True)
class LoopRecipe:
    """What a kind of training takes of ``train``'s settings beyond what every loop shares (AdamW at
    ``train.lr`` / ``weight_decay``, the warm-up + cosine schedule, AMP, accumulation, clipping)."""

    betas: tuple[float, float] = ADAMW_BETAS  # AdamW's
    layer_decay: bool = True  # train.layer_decay applies (fine-tuning)
    ema: bool = True  # train.ema applies
    compile: bool = True  # train.compile applies
    sync_batchnorm: bool = True  # BatchNorm synchronised over CUDA ranks


def build_loop(model: nn.Module, cfg: TrainConfig, device: torch.device, step: Step, batches_per_epoch: int,
               generator: torch.Generator, train_transform: Any = None, recipe: LoopRecipe = LoopRecipe()) -> Loop:
    """The loop of ``step`` over ``model`` on ``device`` (wrapped in DDP under torchrun, compiled under
    ``train.compile``): its EMA, AdamW with the warm-up + cosine schedule over ``batches_per_epoch``, the AMP
    scaler; ``generator`` orders the loader, ``train_transform`` is re-seeded per epoch by the hooks."""
    model.to(device)  # keeps the memory format the set-up chose; the EMA copy below inherits it
    ema = ModelEma(model, cfg.ema_decay) if cfg.ema and recipe.ema else None
    model = _distribute(model, device, recipe.sync_batchnorm)
    compiled = cfg.compile and recipe.compile
    if compiled:
        model = torch.compile(model)
    optimizer = make_optimizer(model, cfg, recipe.betas, recipe.layer_decay)
    scheduler = make_schedule(optimizer, cfg, batches_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=needs_grad_scaler(device, cfg.amp))
    return Loop(model, optimizer, scheduler, scaler, ema, step, generator, device, train_transform, amp=cfg.amp,
                accumulate=cfg.accumulate, clip_grad_norm=cfg.clip_grad_norm, compile=compiled)


def _distribute(model: nn.Module, device: torch.device, sync_batchnorm: bool) -> nn.Module:
    """``model`` in DDP under torchrun (else unchanged), its BatchNorm synchronised on CUDA if ``sync_batchnorm``."""
    if not dist.is_distributed():
        return model
    # SyncBatchNorm is CUDA-only; with gloo on CPU each rank keeps its own batch statistics
    if (sync_batchnorm and device.type == "cuda"
            and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def loop_state(loop: Loop, epoch: int) -> dict[str, Any]:
    """The training state after ``epoch``: plain tensors and values (``torch.load(weights_only=True)`` reads it)."""
    return {
        "epoch": epoch,
        "model": unwrap_model(loop.model).state_dict(),
        "optimizer": loop.optimizer.state_dict(),
        "scheduler": loop.scheduler.state_dict(),
        "scaler": loop.scaler.state_dict(),
        "ema": loop.ema.state_dict() if loop.ema is not None else None,
        "ema_updates": loop.ema.updates if loop.ema is not None else 0,
        "best": loop.best,
        "history": loop.history,
        "stopped": loop.stopped,
        "rng": rng_states(loop.generator),
    }


def restore_loop(loop: Loop, state: dict[str, Any]) -> int:
    """Load a :func:`loop_state` into ``loop`` (the RNG states too); returns the last completed epoch.

    A pretraining state written before pretrain ran this loop lacks ``ema``, ``best`` and ``stopped``: it had
    none of them, so they read as absent.
    """
    unwrap_model(loop.model).load_state_dict(state["model"])
    loop.optimizer.load_state_dict(state["optimizer"])
    loop.scheduler.load_state_dict(state["scheduler"])
    loop.scaler.load_state_dict(state["scaler"])
    if loop.ema is not None and state.get("ema") is not None:
        loop.ema.load_state_dict(state["ema"])
        loop.ema.updates = int(state.get("ema_updates", 0))
    loop.best, loop.history = state.get("best"), list(state["history"])
    loop.stopped = bool(state.get("stopped", False))
    set_rng_states(state["rng"], loop.generator)
    return int(state["epoch"])


def resume_point(loop: Loop, state: dict[str, Any] | None, run: RunDir, epochs: int) -> int:
    """The first epoch to run: 1, or after the epoch ``state`` (restored into ``loop``) ended. UserError when no
    epoch of ``epochs`` is left, before any output; else ``metrics.jsonl`` is cut back to the restored history."""
    start = 1 if state is None else restore_loop(loop, state) + 1
    if start > epochs:
        done = start - 1
        raise UserError(f"--resume {run.root}: the run already finished ({done} epoch{'s' * (done != 1)}); pass "
                        f"--epochs N (more than {done}) to extend it")
    if dist.is_main():
        # the state is the commit point of an epoch: drop any epoch logged after it (killed mid-write)
        lines = "".join(json.dumps(r) + "\n" for r in loop.history)
        atomic_write(run.metrics, lambda tmp: tmp.write_text(lines, encoding="utf-8"))
    return start


def commit_epoch(loop: Loop, run: RunDir, epoch: int) -> None:
    """Commit ``epoch`` (rank 0; after its checkpoints): the training state, then the metrics line of
    ``loop.history[-1]``. A run killed between the two resumes after ``epoch`` and rewrites the line."""
    save_training_state(run.training_state(), loop_state(loop, epoch))
    append_text(run.metrics, json.dumps(loop.history[-1]) + "\n")
