"""Training: datalist -> split -> plan -> cached datasets -> model -> epochs -> run directory."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, WeightedRandomSampler

from medconvnext.config import Config, InferenceConfig, TrainConfig, load_config, save_config
from medconvnext.data.datalist import Datalist, load_datalist
from medconvnext.data.dataset import case_records, make_dataset
from medconvnext.data.fingerprint import compute_fingerprint, plan_preprocessing
from medconvnext.data.patches import PATCH_MODES
from medconvnext.data.pipeline import PreprocessingPipeline
from medconvnext.data.preprocessing import Preprocessing
from medconvnext.data.splits import Split, train_val_split
from medconvnext.data.transforms import augmentation_transforms
from medconvnext.data.validate import require_valid, validate_datalist
from medconvnext.engine import distributed as dist
from medconvnext.engine.checkpoint import atomic_write, save_checkpoint, unwrap_model
from medconvnext.engine.devices import (
    as_model_input,
    autocast,
    enable_fast_kernels,
    needs_grad_scaler,
    resolve_device,
)
from medconvnext.engine.ema import ModelEma
from medconvnext.engine.feeding import BatchAugment, DataWait, check_data_options, loader_options
from medconvnext.engine.inference import check_inference, infer_volume
from medconvnext.engine.mixing import BatchMixer
from medconvnext.engine.provenance import environment_info
from medconvnext.engine.resume import load_training_state, rng_states, save_training_state, set_rng_states
from medconvnext.errors import UserError
from medconvnext.models import apply_memory_format, create_model, get_entry, model_memory_format
from medconvnext.reports.plots import plot_training_curves
from medconvnext.results.metrics import classification_metrics
from medconvnext.results.table import write_prediction_table
from medconvnext.rundir import RunDir

BALANCE_MODES = ("none", "weights", "sampler")
SELECT_MODES = ("val_auc", "last")


class TrainingCallbacks(Protocol):
    """What the trainer reports while it runs (the CLI renders it; tests may ignore it)."""

    def on_start(self, total_epochs: int, steps_per_epoch: int) -> None: ...
    def on_step(self, epoch: int, step: int, loss: float) -> None: ...
    def on_epoch_end(self, record: dict[str, Any]) -> None: ...


def run_plan(
    config: Config, run: RunDir, datalist: Datalist, split: Split, plan: Preprocessing, model: nn.Module,
    device: torch.device, steps_per_epoch: int, start_epoch: int,
) -> dict[str, Any]:
    """What a run is about to do, as plain JSON values (passed to an optional ``on_plan`` callback).

    Keys: ``run_dir``; ``plan`` (spacing mm (x, y, z), input_size voxels, intensity, orientation); ``split``
    (side -> class -> cases); ``model`` (name, parameters, args); ``device``, ``amp``, ``epochs``,
    ``batch_size``, ``steps_per_epoch``, ``start_epoch`` (> 1 when resumed); ``config`` (the resolved config).
    """
    label_of = {c.case_id: c.label for c in datalist.cases}
    sides = {"train": split.train, "val": split.val, "test": split.test}
    counts = {side: {name: sum(label_of.get(i) == name for i in ids) for name in datalist.classes}
              for side, ids in sides.items() if ids}
    return {
        "run_dir": str(run.root),
        "plan": {"spacing": list(plan.spacing), "input_size": list(plan.input_size), "intensity": plan.intensity,
                 "orientation": plan.orientation},
        "split": counts,
        "model": {"name": config.model.name, "parameters": sum(p.numel() for p in model.parameters()),
                  "args": dict(getattr(model, "model_args", {}) or {})},
        "device": str(device),
        "amp": bool(config.train.amp and device.type == "cuda"),
        "epochs": config.train.epochs,
        "batch_size": config.train.batch_size,
        "steps_per_epoch": steps_per_epoch,
        "start_epoch": start_epoch,
        "config": dataclasses.asdict(config),
    }


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


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (the global generators; MONAI transforms are seeded per epoch)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
    if not config.data.path:
        raise UserError("data.path is not set: pass --data DIR")
    _check_recipe(config.train)
    check_data_options(config.data)
    _check_init_2d(config)
    run = RunDir(Path(out))
    if os.environ.get("RANK", "0") == "0":  # (no process group yet) only rank 0 creates the folder: a later rank
        run.check_new(overwrite)  # could see it already; a foreign or existing folder is refused before any work
    datalist = load_datalist(config.data.path)
    # the gate: every image is checked (cached by content) before anything is planned or written
    datalist, skipped = validate_datalist(datalist, skip_bad=config.data.skip_bad)
    if not validated:
        for problem in skipped:
            warnings.warn(f"skipped bad case: {problem}", stacklevel=2)
    try:
        get_entry(config.model.name)  # fail on an unknown model before touching the disk
    except ValueError as exc:
        raise UserError(f"model.name: {exc}") from None
    if split is None:
        split = train_val_split(datalist, config.data.val_fraction, config.train.seed)
    else:
        _check_split(split, datalist)
    if audit:
        audit_training_split(config, datalist, split)
    device = _setup_device(config.train.device)
    if dist.is_main():
        run.prepare_new(overwrite)
    dist.barrier()

    min_size = _build_model(config, datalist).min_input_size
    train_cases = [c for c in datalist.cases if c.case_id in set(split.train)]
    plan = plan_preprocessing(config.preprocessing, compute_fingerprint(train_cases), min_size)
    if dist.is_main():
        _write_run_files(run, config, datalist, split, plan, skipped)
    return _fit(config, run, datalist, split, plan, device, callbacks, state=None)


def resume(
    run_dir: str | Path,
    epochs: int | None = None,
    device: str | None = None,
    callbacks: TrainingCallbacks | None = None,
) -> TrainResult:
    """Continue the run in ``run_dir`` from its last completed epoch, with the run's own config.yaml.

    ``epochs`` extends (or shortens) the run; the cosine schedule is then recomputed for the new
    total from the current step on. ``device`` may move the run to another device. A run killed
    before finishing its first epoch starts again from epoch 1.
    """
    run = RunDir(Path(run_dir))
    for needed in (run.config, run.dataset, run.splits):
        if not needed.is_file():
            raise UserError(f"--resume {run.root}: {needed.name} missing (not a run directory); train it again")
    config = load_config(run.config)
    if epochs is not None:
        config.train.epochs = epochs
    if device is not None:
        config.train.device = device
    dataset = json.loads(run.dataset.read_text(encoding="utf-8"))
    splits = json.loads(run.splits.read_text(encoding="utf-8"))
    datalist = load_datalist(config.data.path)
    split = Split(splits["train"], splits["val"], splits.get("test", []))
    used = {*split.train, *split.val}  # a scan replaced since the run started is checked again (cache by content)
    require_valid([c for c in datalist.cases if c.case_id in used], "; the run's data changed since it started")
    torch_device = _setup_device(config.train.device)
    if dist.is_main() and (epochs is not None or device is not None):
        save_config(config, run.config)
    plan = Preprocessing.from_dict(dataset["preprocessing"])
    state = load_training_state(run.training_state()) if run.training_state().is_file() else None
    return _fit(config, run, datalist, split, plan, torch_device, callbacks, state)


def evaluate_run(run_dir: str | Path, which: str = "last", device: str = "cpu") -> dict[str, Any]:
    """Evaluate ``checkpoint_<which>`` of a run on its validation cases, in this one process.

    Uses the run's config.yaml (inference settings included), splits.json and preprocessing, so the result
    is comparable to the validation metrics the run logged (e.g. to check a DDP run).
    """
    from medconvnext.engine.checkpoint import load_checkpoint

    run = RunDir(Path(run_dir))
    config = load_config(run.config)
    plan = Preprocessing.from_dict(json.loads(run.dataset.read_text(encoding="utf-8"))["preprocessing"])
    splits = json.loads(run.splits.read_text(encoding="utf-8"))
    datalist = load_datalist(config.data.path)
    by_id = {c.case_id: c for c in datalist.cases}
    records = case_records(datalist, [by_id[i] for i in splits["val"]])
    tiled = config.inference.mode != "whole"
    transform = PreprocessingPipeline(plan).deterministic("uncropped" if tiled else "cropped")
    torch_device = resolve_device(device)
    loader = DataLoader(make_dataset(records, transform, "none"), batch_size=1 if tiled else config.train.batch_size,
                        **loader_options(config.data, torch_device))
    checkpoint = load_checkpoint(run.checkpoint(which))
    model = checkpoint.build_model().to(torch_device)
    apply_memory_format(model, torch_device, plan.input_size)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.train.label_smoothing)
    tiling = (config.inference, plan.input_size) if tiled else None
    return evaluate(model, loader, torch_device, config.train.amp, datalist.classes, loss_fn, tiling)


def audit_training_split(
    config: Config, datalist: Datalist, split: Split | Sequence[Any], group_by: str | None = "subject"
) -> None:
    """Leakage audit of a split (or of cross-validation folds) as ``data.leakage`` says: warn (once, on the
    first process), error (UserError in every process) or off. Runs before any process group exists."""
    import os

    from medconvnext.data.leakage import LEAKAGE_MODES, audit_folds, audit_split, enforce

    mode = config.data.leakage
    if mode not in LEAKAGE_MODES:
        raise UserError(f"data.leakage must be one of {', '.join(LEAKAGE_MODES)}, got {mode!r}")
    if mode == "off" or (mode == "warn" and os.environ.get("RANK", "0") != "0"):
        return
    if isinstance(split, Split):
        report = audit_split(datalist, split, group_by)
    else:
        report = audit_folds(datalist, split, group_by)
    enforce(report, mode, "--strict (data.leakage=error)")


def _check_split(split: Split, datalist: Datalist) -> None:
    """An explicit split must name known cases, each on one side, with a training and a validation set."""
    known = {c.case_id for c in datalist.cases}
    sides = {"train": split.train, "val": split.val, "test": split.test}
    for side, ids in sides.items():
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise UserError(f"split.{side}: unknown case id {unknown[0]!r} (not in {datalist.source})")
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = set(sides[a]) & set(sides[b])
        if both:
            raise UserError(f"split: case {sorted(both)[0]!r} is in both {a} and {b}")
    if not split.train or not split.val:
        raise UserError("split: needs at least one training and one validation case")


def _check_recipe(cfg: TrainConfig) -> None:
    """Field-naming user errors for the recipe options."""
    if cfg.balance not in BALANCE_MODES:
        raise UserError(f"train.balance must be one of {', '.join(BALANCE_MODES)}, got {cfg.balance!r}")
    if cfg.patches not in PATCH_MODES:
        raise UserError(f"train.patches must be one of {', '.join(PATCH_MODES)}, got {cfg.patches!r}")
    if cfg.select not in SELECT_MODES:
        raise UserError(f"train.select must be one of {', '.join(SELECT_MODES)}, got {cfg.select!r}")
    if cfg.layer_decay is not None and not 0.0 < cfg.layer_decay <= 1.0:
        raise UserError(f"train.layer_decay must be in (0, 1], got {cfg.layer_decay}")
    if cfg.accumulate < 1:
        raise UserError(f"train.accumulate must be >= 1, got {cfg.accumulate}")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise UserError(f"train.label_smoothing must be in [0, 1), got {cfg.label_smoothing}")
    for name in ("mixup", "cutmix"):
        if getattr(cfg, name) < 0:
            raise UserError(f"train.{name} (a Beta alpha) must be >= 0, got {getattr(cfg, name)}")
    if not 0.0 <= cfg.mix_prob <= 1.0:
        raise UserError(f"train.mix_prob must be in [0, 1], got {cfg.mix_prob}")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise UserError(f"train.ema_decay must be in [0, 1), got {cfg.ema_decay}")
    if cfg.balance == "sampler" and dist.env_world_size() > 1:
        raise UserError("train.balance=sampler is not supported with torchrun; use train.balance=weights")


def _check_init_2d(config: Config) -> None:
    """Fail on a bad ``model.init_2d`` before a run directory is created."""
    from medconvnext.models.inflate import MODES

    if config.model.init_2d_mode not in MODES:
        raise UserError(f"model.init_2d_mode must be one of {', '.join(MODES)}, got {config.model.init_2d_mode!r}")
    if config.model.init_2d and not Path(config.model.init_2d).is_file():
        raise UserError(f"model.init_2d: 2D weights file not found: {config.model.init_2d}")
    if config.model.init:
        from medconvnext.engine.warm_start import init_checkpoint

        init_checkpoint(config.model.init)  # UserError when there is no checkpoint there


def _setup_device(name: str) -> torch.device:
    """Resolve the device; under torchrun join the process group and use this rank's GPU."""
    device = resolve_device(name)
    dist.init_from_env(device.type)
    if device.type == "cuda" and dist.env_world_size() > 1:
        device = torch.device("cuda", dist.local_rank())
    return device


def _build_model(config: Config, datalist: Datalist) -> nn.Module:
    """The configured model (one input channel per image of a case, one output per class);
    ``train.drop_path_rate`` goes to the model when it accepts one."""
    num_classes = len(datalist.classes)
    args = {"in_channels": len(datalist.cases[0].images), **config.model.args}
    if config.train.drop_path_rate is not None:
        args["drop_path_rate"] = config.train.drop_path_rate
    try:
        return _create_configured_model(config.model.name, num_classes, args)
    except TypeError as exc:
        if "drop_path_rate" not in str(exc) or "drop_path_rate" in config.model.args:
            raise UserError(f"model.args: {exc}") from exc
        warnings.warn(f"model {config.model.name} has no drop_path_rate; train.drop_path_rate ignored", stacklevel=2)
        args.pop("drop_path_rate")
        return _create_configured_model(config.model.name, num_classes, args)


def _create_configured_model(name: str, num_classes: int, args: dict[str, Any]) -> nn.Module:
    """``create_model`` with a bad argument value reported as a user error naming ``model.args``."""
    try:
        return create_model(name, num_classes=num_classes, **args)
    except ValueError as exc:
        raise UserError(f"model.args: {exc}") from exc


def _init_from_2d(model: nn.Module, config: Config, run: RunDir) -> None:
    """Start from inflated 2D ConvNeXt weights; what was loaded is written to ``init_2d.json`` in the run."""
    from medconvnext.models.inflate import load_2d_weights_file

    try:
        report = load_2d_weights_file(model, config.model.init_2d, mode=config.model.init_2d_mode)
    except ValueError as exc:
        raise UserError(f"model.init_2d {config.model.init_2d}: {exc}") from None
    if dist.is_main():
        record = {"path": str(config.model.init_2d), **dataclasses.asdict(report)}
        atomic_write(run.root / "init_2d.json",
                     lambda tmp: tmp.write_text(json.dumps(record, indent=2), encoding="utf-8"))
        for note in report.notes:
            warnings.warn(f"model.init_2d: {note}", stacklevel=2)


def _init_from_3d(model: nn.Module, config: Config, run: RunDir) -> None:
    """Start from a pretraining run's encoder or another checkpoint; what was loaded goes to ``init.json``."""
    from medconvnext.engine.warm_start import load_3d_weights

    report = load_3d_weights(model, config.model.init)
    if dist.is_main():
        atomic_write(run.root / "init.json", lambda tmp: tmp.write_text(json.dumps(report, indent=2), encoding="utf-8"))


def _write_run_files(
    run: RunDir, config: Config, datalist: Datalist, split: Split, plan: Preprocessing, skipped: list[str]
) -> None:
    save_config(config, run.config)
    dataset = {
        "source": datalist.source,
        "classes": datalist.classes,
        "preprocessing": plan.to_dict(),
        "cases": [c.to_dict() for c in datalist.cases],
        "skipped_bad_cases": skipped,
        "environment": environment_info(),
    }
    run.dataset.write_text(json.dumps(dataset, indent=2), encoding="utf-8")
    run.splits.write_text(json.dumps(split.to_dict(), indent=2), encoding="utf-8")


@dataclass
class _Loop:
    """Everything the epoch loop mutates (and ``training_state.pt`` saves)."""

    model: nn.Module  # possibly DDP / compiled; unwrap_model() gives the plain module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ema: ModelEma | None
    loss_fn: nn.Module
    generator: torch.Generator
    train_transform: Any
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


def _fit(
    config: Config,
    run: RunDir,
    datalist: Datalist,
    split: Split,
    plan: Preprocessing,
    device: torch.device,
    callbacks: TrainingCallbacks | None,
    state: dict[str, Any] | None,
) -> TrainResult:
    cfg = config.train
    callbacks = callbacks if callbacks is not None and dist.is_main() else SilentCallbacks()
    seed_everything(cfg.seed)  # model init depends only on the seed, on every rank and on resume
    model = _build_model(config, datalist)
    if config.model.init_2d and state is None:
        _init_from_2d(model, config, run)
    if config.model.init and state is None:
        _init_from_3d(model, config, run)
    by_id = {c.case_id: c for c in datalist.cases}
    train_records = case_records(datalist, [by_id[i] for i in split.train])
    val_records = case_records(datalist, [by_id[i] for i in split.val])
    if dist.is_main():
        _warn_undefined_auc([by_id[i] for i in split.val], cfg.select)
    # data.augment_on=device: the loader's transforms stop before the augmentation, which runs in the step
    on_device = config.data.augment_on == "device"
    loader_augment = "none" if on_device else config.data.augment
    train_transform = PreprocessingPipeline(plan).training(loader_augment, cfg.patches)
    feed = loader_options(config.data, device)  # the loaders' workers also fill the memory cache (threads)
    train_ds = make_dataset(train_records, train_transform, config.data.cache, feed["num_workers"],
                            cache_dir=config.data.cache_dir)
    check_inference(config.inference)
    # whole: validate on the training input size; sliding/auto: on the full (uncropped) volumes
    tiled = config.inference.mode != "whole"
    val_transform = PreprocessingPipeline(plan).deterministic("uncropped" if tiled else "cropped")
    # each rank evaluates (and caches) every world_size-th case; the results are gathered, so each case counts once
    val_part = make_dataset(val_records[dist.rank() :: dist.world_size()], val_transform, config.data.cache,
                            feed["num_workers"], cache_dir=config.data.cache_dir)
    generator = torch.Generator().manual_seed(cfg.seed)
    enable_fast_kernels(device)
    train_loader = _train_loader(train_ds, train_records, len(datalist.classes), config, generator, device)
    # uncropped volumes differ in size, so they go one at a time
    val_loader = DataLoader(val_part, batch_size=1 if tiled else cfg.batch_size, **feed)
    tiling = (config.inference, plan.input_size) if tiled else None

    apply_memory_format(model, device, plan.input_size)  # the layout measured fastest for this device and size
    loop = _make_loop(model, config, device, train_records, len(datalist.classes), len(train_loader),
                      generator, train_transform)
    if on_device:
        loop.augment = BatchAugment(augmentation_transforms(config.data.augment, plan.input_size))
    start_epoch = 1
    if state is not None:
        start_epoch = _restore(loop, state) + 1
    if dist.is_main():
        # the state is the commit point of an epoch: drop any epoch logged after it (killed mid-write)
        lines = "".join(json.dumps(r) + "\n" for r in loop.history)
        atomic_write(run.metrics, lambda tmp: tmp.write_text(lines, encoding="utf-8"))

    meta_base = {
        "model": unwrap_model(loop.model).model_args,
        "class_names": datalist.classes,
        "preprocessing": plan.to_dict(),
        "inference": dataclasses.asdict(config.inference),
        "environment": environment_info(),
        # the layout it trained in (provenance; checkpoints are stored contiguous, predict picks its own)
        "memory_format": "channels_last" if model_memory_format(loop.model) == torch.channels_last_3d else "contiguous",
    }
    logger = _TensorBoard(run.root / "tensorboard") if cfg.tensorboard and dist.is_main() else None
    if hasattr(callbacks, "on_plan"):  # optional hook: what is about to run (the CLI's summary panel, trackers)
        callbacks.on_plan(run_plan(config, run, datalist, split, plan, unwrap_model(loop.model), device,
                                   len(train_loader), start_epoch))
    callbacks.on_start(cfg.epochs, len(train_loader))
    last_plot = 0.0
    for epoch in range(start_epoch, cfg.epochs + 1):
        if loop.stopped:
            break
        record, val = _run_epoch(loop, epoch, train_loader, (val_loader, tiling), device, cfg, datalist.classes,
                                 callbacks)
        improved = cfg.select == "last" or loop.best is None or _is_better(record, loop.best)
        if improved:
            loop.best = record
        patience = cfg.early_stopping_patience
        loop.stopped = patience is not None and epoch - loop.best["epoch"] >= patience
        if dist.is_main():
            _save_epoch(run, loop, {**meta_base, "epoch": epoch, "metrics": record}, improved, val, datalist.classes,
                        epoch)
            if logger is not None:
                logger.log(record)
            if time.monotonic() - last_plot > 60 or epoch == cfg.epochs or loop.stopped:
                _plot_progress(run, loop.history)
                last_plot = time.monotonic()
        dist.barrier()
        callbacks.on_epoch_end({**record, "best_epoch": loop.best["epoch"]})
    if logger is not None:
        logger.close()
    if loop.best is None:
        raise UserError(f"--resume {run.root}: the run already finished ({cfg.epochs} epochs); pass --epochs to extend")
    return TrainResult(run.root, loop.best["epoch"], loop.best, loop.history)


def _train_loader(
    train_ds: Any, records: list[dict], num_classes: int, config: Config, generator: torch.Generator,
    device: torch.device,
) -> DataLoader:
    """Shuffled (or class-balanced, or distributed) batches; the seeded generator makes the order reproducible."""
    cfg = config.train
    sampler: Any = None
    if dist.is_distributed():
        sampler = DistributedSampler(train_ds, dist.world_size(), dist.rank(), shuffle=True, seed=cfg.seed)
    elif cfg.balance == "sampler":
        counts = _class_counts(records, num_classes)
        weights = [1.0 / counts[r["label"]] for r in records]
        sampler = WeightedRandomSampler(weights, num_samples=len(records), replacement=True, generator=generator)
    per_rank = len(train_ds) // dist.world_size()
    return DataLoader(
        train_ds, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
        drop_last=per_rank > cfg.batch_size, generator=generator, worker_init_fn=_seed_worker,
        **loader_options(config.data, device),
    )


def _seed_worker(worker_id: int) -> None:
    """Give each loader worker its own reproducible random streams (torch seeds it from the loader's generator)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    info = torch.utils.data.get_worker_info()
    dataset = info.dataset if info is not None else None
    transform = getattr(dataset, "transform", None)
    if hasattr(transform, "set_random_state"):
        transform.set_random_state(seed=seed)


def _class_counts(records: list[dict], num_classes: int) -> list[int]:
    counts = [0] * num_classes
    for r in records:
        counts[r["label"]] += 1
    return [max(1, c) for c in counts]


def _make_loop(
    model: nn.Module,
    config: Config,
    device: torch.device,
    train_records: list[dict],
    num_classes: int,
    batches_per_epoch: int,
    generator: torch.Generator,
    train_transform: Any,
) -> _Loop:
    cfg = config.train
    model.to(device)  # keeps the memory format _fit chose; the EMA copy below inherits it
    ema = ModelEma(model, cfg.ema_decay) if cfg.ema else None
    if dist.is_distributed():
        # SyncBatchNorm is CUDA-only; with gloo on CPU each rank keeps its own batch statistics
        if device.type == "cuda" and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)
    if cfg.layer_decay is not None:
        from medconvnext.engine.warm_start import layer_decay_groups

        groups = layer_decay_groups(model, cfg.weight_decay, cfg.lr, cfg.layer_decay)
    else:
        groups = param_groups(model, cfg.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    steps = math.ceil(batches_per_epoch / cfg.accumulate)
    scheduler = warmup_cosine(optimizer, cfg.warmup_epochs * steps, cfg.epochs * steps)
    scaler = torch.amp.GradScaler("cuda", enabled=needs_grad_scaler(device, cfg.amp))
    weight = None
    if cfg.balance == "weights":
        counts = torch.tensor(_class_counts(train_records, num_classes), dtype=torch.float32)
        weight = (counts.sum() / (num_classes * counts)).to(device)  # inverse frequency, mean 1
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
    mixer = BatchMixer(num_classes, cfg.mixup, cfg.cutmix, cfg.mix_prob)
    return _Loop(model, optimizer, scheduler, scaler, ema, loss_fn, generator, train_transform,
                 mixer if mixer.enabled else None, compile=cfg.compile)


def _training_state(loop: _Loop, epoch: int) -> dict[str, Any]:
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


def _restore(loop: _Loop, state: dict[str, Any]) -> int:
    """Load a training state into ``loop``; returns the last completed epoch."""
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


def _run_epoch(
    loop: _Loop,
    epoch: int,
    train_loader: DataLoader,
    val_loader: tuple[DataLoader, tuple[InferenceConfig, Sequence[int]] | None],
    device: torch.device,
    cfg: TrainConfig,
    class_names: Sequence[str],
    callbacks: TrainingCallbacks,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train one epoch, evaluate, and return (metrics record, validation outputs)."""
    started = time.perf_counter()
    # MONAI random transforms keep their own RandomState objects, so seed them per epoch (and rank):
    # the augmentation of epoch e is then the same whether or not the run was resumed before it
    if hasattr(loop.train_transform, "set_random_state"):
        loop.train_transform.set_random_state(seed=(cfg.seed * 100_003 + epoch * 1_009 + dist.rank()) % 2**32)
    if loop.augment is not None:
        loop.augment.set_random_state(seed=(cfg.seed * 100_019 + epoch * 1_013 + dist.rank()) % 2**32)
    if isinstance(getattr(train_loader, "sampler", None), DistributedSampler):
        train_loader.sampler.set_epoch(epoch)
    wait = DataWait()
    train_loss, seen = _train_epoch(loop, train_loader, device, cfg,
                                    lambda step, loss: callbacks.on_step(epoch, step, loss), wait)
    loader, tiling = val_loader
    dist.broadcast_buffers(loop.eval_model)  # evaluate with the buffers that rank 0 saves
    val = evaluate(loop.eval_forward, loader, device, cfg.amp, class_names, loop.loss_fn, tiling)
    elapsed = time.perf_counter() - started
    record = {
        "epoch": epoch,
        "train_loss": train_loss,
        "val_loss": val["loss"],
        "val_auc": val["metrics"]["auc"],
        "val_accuracy": val["metrics"]["accuracy"],
        "val_balanced_accuracy": val["metrics"]["balanced_accuracy"],
        "lr": max(group["lr"] for group in loop.optimizer.param_groups),  # the peak (head) lr under layer_decay
        "epoch_time_s": round(elapsed, 3),
        "train_volumes_per_s": round(seen / elapsed, 3) if elapsed > 0 else None,
        # time waiting for the next training batch / time of the training loop (this process)
        "data_wait_share": round(wait.share, 4) if wait.share is not None else None,
    }
    loop.history.append(record)
    return record, val


def _save_epoch(
    run: RunDir,
    loop: _Loop,
    meta: dict[str, Any],
    improved: bool,
    val: dict[str, Any],
    class_names: Sequence[str],
    epoch: int,
) -> None:
    """Checkpoints, then the training state (the commit point), then the metrics line."""
    save_checkpoint(run.checkpoint("last"), loop.eval_model, meta)
    if improved:
        save_checkpoint(run.checkpoint("best"), loop.eval_model, meta)
        _write_val_predictions(run.val_predictions, val, class_names)
    save_training_state(run.training_state(), _training_state(loop, epoch))
    with open(run.metrics, "a", encoding="utf-8") as f:
        f.write(json.dumps(loop.history[-1]) + "\n")


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


def _warn_undefined_auc(val_cases: list, select: str) -> None:
    """Say once, before the first epoch, why the validation AUC will read n/a: it needs two classes."""
    labels = sorted({c.label for c in val_cases if c.label is not None})
    if len(labels) >= 2 or not val_cases:
        return
    present = f"only class {labels[0]!r}" if labels else "no labelled case"
    chosen = "the last epoch is kept" if select == "last" else "the best checkpoint is chosen by validation loss"
    warnings.warn(f"the validation set holds {present} ({len(val_cases)} case(s)): the validation AUC is undefined "
                  f"(n/a) and {chosen}; put cases of every class in val", stacklevel=2)


def _is_better(record: dict[str, Any], best: dict[str, Any]) -> bool:
    """Higher validation AUC wins; lower validation loss breaks ties and stands in when AUC is undefined."""
    auc, best_auc = record["val_auc"], best["val_auc"]
    if auc is not None and best_auc is not None and auc != best_auc:
        return auc > best_auc
    if auc is not None and best_auc is None:
        return True
    if auc is None and best_auc is not None:
        return False
    return record["val_loss"] < best["val_loss"]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms and layer-scale vectors (1-D parameters), as in timm."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from ~0 to the base LR, then cosine decay to 0, stepped per optimizer step."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _train_epoch(
    loop: _Loop, loader: DataLoader, device: torch.device, cfg: TrainConfig, on_step: Any, wait: DataWait | None = None
) -> tuple[float, int]:
    """One pass over ``loader``; returns (mean loss over all ranks, volumes seen by all ranks).
    ``wait`` accumulates the time spent waiting for batches."""
    loop.model.train()
    total, seen = 0.0, 0
    loop.optimizer.zero_grad(set_to_none=True)
    fmt = model_memory_format(loop.model)
    for step, batch in enumerate((wait or DataWait()).iterate(loader), start=1):
        images = as_model_input(batch["image"], device)
        labels = batch["label"].to(device, non_blocking=True)
        if loop.augment is not None:
            images = loop.augment(images)
        targets = labels
        if loop.mixer is not None:
            images, targets = loop.mixer(images, labels, loop.generator, stream=dist.rank())
        images = images.contiguous(memory_format=fmt)
        with autocast(device, cfg.amp):
            loss = loop.loss_fn(loop.model(images), targets)
        loop.scaler.scale(loss / cfg.accumulate).backward()
        if step % cfg.accumulate == 0 or step == len(loader):
            _optimizer_step(loop, cfg.clip_grad_norm)
        total += loss.item() * len(labels)
        seen += len(labels)
        on_step(step, loss.item())
    total, seen_all = dist.sum_across_ranks([total, float(seen)])
    return total / max(1.0, seen_all), int(seen_all)


def _optimizer_step(loop: _Loop, clip_grad_norm: float | None) -> None:
    if clip_grad_norm is not None:
        loop.scaler.unscale_(loop.optimizer)  # clip the true gradients, not the loss-scaled ones
        torch.nn.utils.clip_grad_norm_(loop.model.parameters(), clip_grad_norm)
    loop.scaler.step(loop.optimizer)
    loop.scaler.update()
    loop.optimizer.zero_grad(set_to_none=True)
    loop.scheduler.step()
    if loop.ema is not None:
        loop.ema.update(unwrap_model(loop.model))


@torch.no_grad()
def predict_loader(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    amp: bool,
    tiling: tuple[InferenceConfig, Sequence[int]] | None = None,
) -> dict[str, Any]:
    """Logits of every case in ``loader``, with labels and case ids.

    ``tiling = (inference settings, input size)`` runs each (uncropped, batch-of-one) volume through
    :func:`medconvnext.engine.inference.infer_volume`; the "logits" are then log-probabilities.
    """
    model.eval()
    logits, labels, ids = [], [], []
    for batch in loader:
        if tiling is not None:
            settings, input_size = tiling
            probs = infer_volume(model, batch["image"][0], settings, input_size, device, amp).probabilities
            out = torch.log(torch.as_tensor(probs).clamp_min(1e-12))[None]
        else:
            with autocast(device, amp):
                out = model(as_model_input(batch["image"], device, model_memory_format(model)))
        logits.append(out.float().cpu())
        labels.append(batch["label"])
        ids.extend(batch["case_id"])
    if not logits:  # a rank with no validation case under DDP
        return {"logits": torch.zeros(0, 0), "labels": torch.zeros(0, dtype=torch.long), "case_ids": []}
    return {"logits": torch.cat(logits), "labels": torch.cat(labels), "case_ids": ids}


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    amp: bool,
    class_names: Sequence[str],
    loss_fn: nn.Module,
    tiling: tuple[InferenceConfig, Sequence[int]] | None = None,
) -> dict[str, Any]:
    """Loss, probabilities and metrics over a labelled loader (all ranks' cases under DDP)."""
    out = _gather_predictions(predict_loader(model, loader, device, amp, tiling))
    probs = torch.softmax(out["logits"], dim=1)
    loss = float(loss_fn(out["logits"], out["labels"].to(out["logits"].device)))
    metrics = classification_metrics(out["labels"].numpy(), probs.numpy(), list(class_names))
    return {"loss": loss, "metrics": metrics, "probs": probs, **out}


def _gather_predictions(out: dict[str, Any]) -> dict[str, Any]:
    """Every rank's share of the validation cases, concatenated (each case exactly once)."""
    if not dist.is_distributed():
        return out
    parts = dist.all_gather_objects(out)
    return {
        "logits": torch.cat([p["logits"] for p in parts]),
        "labels": torch.cat([p["labels"] for p in parts]),
        "case_ids": [i for p in parts for i in p["case_ids"]],
    }


def _write_val_predictions(path: Path, val: dict[str, Any], class_names: Sequence[str]) -> None:
    labels = [class_names[i] for i in val["labels"].tolist()]
    write_prediction_table(path, val["case_ids"], val["probs"].numpy(), class_names, labels=labels)
