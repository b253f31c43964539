"""The epoch loop: train steps over a loader, with hooks for what happens around them.

The shape follows nnU-Net's trainer hooks, much shorter::

    run_epochs(loop, loader, epochs, hooks)
        for each epoch (until loop.stopped):
            hooks.on_epoch_start(loop, epoch)          seed the epoch's augmentation, the sampler's epoch
            train_epoch(loop, loader, ...)             one train step per batch; optimizer step every
                hooks.on_step(loop, epoch, step, loss)     ``accumulate`` batches (AMP scaler, clipping,
                                                           schedule, EMA update)
            hooks.on_epoch_end(loop, EpochStats)       validation, model selection, checkpoints, logging

:class:`Loop` is everything the loop mutates; :func:`loop_state` / :func:`restore_loop` turn it into the plain
``training_state.pt`` values and back, so a resumed run continues bit for bit. :func:`build_loop` assembles a
``Loop`` from the config for ``train`` (EMA, DDP, ``torch.compile``, optimiser and schedule from
:mod:`medconvnext.engine.optim`); ``bench/recipe_search.py`` builds one by hand and runs the same loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from medconvnext.config import Config
from medconvnext.engine import distributed as dist
from medconvnext.engine.checkpoint import unwrap_model
from medconvnext.engine.devices import as_model_input, autocast, needs_grad_scaler
from medconvnext.engine.ema import ModelEma
from medconvnext.engine.feeding import BatchAugment, DataWait
from medconvnext.engine.mixing import BatchMixer
from medconvnext.engine.optim import make_optimizer, make_schedule
from medconvnext.engine.resume import rng_states, set_rng_states
from medconvnext.models import model_memory_format

__all__ = ["Batches", "EpochHooks", "EpochStats", "Loop", "build_loop", "loop_state", "restore_loop", "run_epochs",
           "train_epoch"]


class Batches(Protocol):
    """What the loop trains on: a DataLoader, or anything sized that yields dicts with ``image`` (N, C, D, H, W)
    (MIL bags: (N, K, C, D, H, W)) and ``label`` (N,) integer classes. The length is needed: the last batch
    flushes gradient accumulation."""

    def __iter__(self) -> Iterator[dict[str, Any]]: ...
    def __len__(self) -> int: ...


@dataclass
class Loop:
    """Everything the epoch loop mutates (and ``training_state.pt`` saves), and the step's settings."""

    model: nn.Module  # possibly DDP / compiled; unwrap_model() gives the plain module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler  # stepped once per optimizer step
    scaler: torch.amp.GradScaler  # disabled (a pass-through) unless AMP on CUDA needs it
    ema: ModelEma | None
    loss_fn: nn.Module  # (logits (N, K), targets (N,) classes or (N, K) mixed probabilities) -> scalar
    generator: torch.Generator  # the loader's order and the mixing draws; saved with the RNG states
    device: torch.device
    train_transform: Any = None  # the loader's random transforms, re-seeded per epoch by the trainer's hook
    amp: bool = False  # mixed precision (train.amp; only on CUDA)
    accumulate: int = 1  # optimizer steps every N batches (train.accumulate)
    clip_grad_norm: float | None = None
    mixer: BatchMixer | None = None  # mixup / CutMix; None when both are off
    augment: BatchAugment | None = None  # the random augmentation when it runs on the device (data.augment_on)
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
    """One pass over ``loader``; returns (mean loss over all ranks, volumes seen by all ranks).

    ``on_step(step, loss)`` follows every batch; ``wait`` accumulates the time spent waiting for batches.
    """
    loop.model.train()
    total, seen = 0.0, 0
    loop.optimizer.zero_grad(set_to_none=True)
    fmt = model_memory_format(loop.model)
    for step, batch in enumerate((wait or DataWait()).iterate(loader), start=1):
        loss, count = _train_step(loop, batch, fmt)
        if step % loop.accumulate == 0 or step == len(loader):
            optimizer_step(loop)
        total += loss.item() * count
        seen += count
        on_step(step, loss.item())
    total, seen_all = dist.sum_across_ranks([total, float(seen)])
    return total / max(1.0, seen_all), int(seen_all)


def _train_step(loop: Loop, batch: dict[str, Any], fmt: torch.memory_format) -> tuple[torch.Tensor, int]:
    """Forward and backward of one batch (gradients accumulate); returns (loss, volumes in the batch)."""
    images = as_model_input(batch["image"], loop.device)
    labels = batch["label"].to(loop.device, non_blocking=True)
    if loop.augment is not None:
        # MIL bags (B, K, C, D, H, W): every patch is augmented on its own
        images = loop.augment(images.flatten(0, 1)).reshape(images.shape) if images.ndim == 6 else loop.augment(images)
    targets = labels
    if loop.mixer is not None:
        images, targets = loop.mixer(images, labels, loop.generator, stream=dist.rank())
    if images.ndim == 5:  # a MIL model lays out its (B * K) patches itself
        images = images.contiguous(memory_format=fmt)
    with autocast(loop.device, loop.amp):
        loss = loop.loss_fn(loop.model(images), targets)
    loop.scaler.scale(loss / loop.accumulate).backward()
    return loss, len(labels)


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


def build_loop(
    model: nn.Module,
    config: Config,
    device: torch.device,
    class_counts: list[int],
    batches_per_epoch: int,
    generator: torch.Generator,
    train_transform: Any,
) -> Loop:
    """The loop ``train`` runs: ``model`` on ``device`` (wrapped in DDP under torchrun, compiled under
    ``train.compile``), its EMA, AdamW with the warm-up + cosine schedule, the AMP scaler and the loss
    (class-weighted under ``train.balance = weights``, with ``class_counts`` per class, each >= 1)."""
    cfg = config.train
    model.to(device)  # keeps the memory format the set-up chose; the EMA copy below inherits it
    ema = ModelEma(model, cfg.ema_decay) if cfg.ema else None
    if dist.is_distributed():
        # SyncBatchNorm is CUDA-only; with gloo on CPU each rank keeps its own batch statistics
        if device.type == "cuda" and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_schedule(optimizer, cfg, batches_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=needs_grad_scaler(device, cfg.amp))
    weight = None
    if cfg.balance == "weights":
        counts = torch.tensor(class_counts, dtype=torch.float32)
        weight = (counts.sum() / (len(class_counts) * counts)).to(device)  # inverse frequency, mean 1
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
    mixer = BatchMixer(len(class_counts), cfg.mixup, cfg.cutmix, cfg.mix_prob)
    return Loop(model, optimizer, scheduler, scaler, ema, loss_fn, generator, device, train_transform,
                amp=cfg.amp, accumulate=cfg.accumulate, clip_grad_norm=cfg.clip_grad_norm,
                mixer=mixer if mixer.enabled else None, compile=cfg.compile)


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
    """Load a :func:`loop_state` into ``loop`` (the RNG states too); returns the last completed epoch."""
    unwrap_model(loop.model).load_state_dict(state["model"])
    loop.optimizer.load_state_dict(state["optimizer"])
    loop.scheduler.load_state_dict(state["scheduler"])
    loop.scaler.load_state_dict(state["scaler"])
    if loop.ema is not None and state["ema"] is not None:
        loop.ema.load_state_dict(state["ema"])
        loop.ema.updates = int(state.get("ema_updates", 0))
    loop.best, loop.history, loop.stopped = state["best"], list(state["history"]), bool(state["stopped"])
    set_rng_states(state["rng"], loop.generator)
    return int(state["epoch"])
