"""Training: datalist -> split -> plan -> cached datasets -> model -> epochs -> run directory."""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from medconvnext.config import Config, save_config
from medconvnext.data.datalist import Datalist, load_datalist
from medconvnext.data.dataset import case_records, make_dataset
from medconvnext.data.fingerprint import compute_fingerprint, plan_preprocessing
from medconvnext.data.preprocessing import Preprocessing
from medconvnext.data.splits import Split, train_val_split
from medconvnext.data.transforms import deterministic_transforms, training_transforms
from medconvnext.engine.checkpoint import save_checkpoint
from medconvnext.engine.devices import autocast, needs_grad_scaler, resolve_device
from medconvnext.engine.metrics import classification_metrics
from medconvnext.engine.provenance import environment_info
from medconvnext.errors import UserError
from medconvnext.models import create_model, get_entry
from medconvnext.rundir import RunDir


class TrainingCallbacks(Protocol):
    """What the trainer reports while it runs (the CLI renders it; tests may ignore it)."""

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


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (MONAI's random transforms draw from these too)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(
    config: Config, out: str | Path, overwrite: bool = False, callbacks: TrainingCallbacks | None = None
) -> TrainResult:
    """Train ``config.model`` on ``config.data.path`` into the run directory ``out``."""
    callbacks = callbacks or SilentCallbacks()
    if not config.data.path:
        raise UserError("data.path is not set: pass --data DIR")
    datalist = load_datalist(config.data.path)
    get_entry(config.model.name)  # fail on an unknown model before touching the disk
    run = RunDir(Path(out))
    run.prepare_new(overwrite)

    seed_everything(config.train.seed)
    split = train_val_split(datalist, config.data.val_fraction, config.train.seed)
    model = create_model(config.model.name, num_classes=len(datalist.classes), **config.model.args)
    train_cases = [c for c in datalist.cases if c.case_id in set(split.train)]
    plan = plan_preprocessing(config.preprocessing, compute_fingerprint(train_cases), model.min_input_size)
    _write_run_files(run, config, datalist, split, plan)
    return _fit(config, run, datalist, split, plan, model, callbacks)


def _write_run_files(run: RunDir, config: Config, datalist: Datalist, split: Split, plan: Preprocessing) -> None:
    save_config(config, run.config)
    dataset = {
        "source": datalist.source,
        "classes": datalist.classes,
        "preprocessing": plan.to_dict(),
        "cases": [c.to_dict() for c in datalist.cases],
        "environment": environment_info(),
    }
    run.dataset.write_text(json.dumps(dataset, indent=2))
    run.splits.write_text(json.dumps(split.to_dict(), indent=2))


def _fit(
    config: Config,
    run: RunDir,
    datalist: Datalist,
    split: Split,
    plan: Preprocessing,
    model: nn.Module,
    callbacks: TrainingCallbacks,
) -> TrainResult:
    cfg = config.train
    device = resolve_device(cfg.device)
    by_id = {c.case_id: c for c in datalist.cases}
    train_records = case_records(datalist, [by_id[i] for i in split.train])
    val_records = case_records(datalist, [by_id[i] for i in split.val])
    train_ds = make_dataset(train_records, training_transforms(plan, config.data.augment), config.data.cache)
    val_ds = make_dataset(val_records, deterministic_transforms(plan), config.data.cache)
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(
        train_ds, batch_size=cfg.batch_size, shuffle=True, drop_last=len(train_ds) > cfg.batch_size,
        num_workers=config.data.num_workers, generator=generator,
    )
    val_loader = DataLoader(val_ds, batch_size=cfg.batch_size, num_workers=config.data.num_workers)

    model.to(device)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    steps_per_epoch = len(train_loader)
    scheduler = warmup_cosine(optimizer, cfg.warmup_epochs * steps_per_epoch, cfg.epochs * steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=needs_grad_scaler(device, cfg.amp))
    loss_fn = nn.CrossEntropyLoss()

    meta_base = {
        "model": model.model_args,
        "class_names": datalist.classes,
        "preprocessing": plan.to_dict(),
        "environment": environment_info(),
    }
    callbacks.on_start(cfg.epochs, steps_per_epoch)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    for epoch in range(1, cfg.epochs + 1):
        started = time.perf_counter()
        train_loss, seen = _train_epoch(model, train_loader, optimizer, scheduler, scaler, loss_fn, device, cfg.amp,
                                        lambda step, loss, e=epoch: callbacks.on_step(e, step, loss))
        val = evaluate(model, val_loader, device, cfg.amp, datalist.classes, loss_fn)
        elapsed = time.perf_counter() - started
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val["loss"],
            "val_auc": val["metrics"]["auc"],
            "val_accuracy": val["metrics"]["accuracy"],
            "val_balanced_accuracy": val["metrics"]["balanced_accuracy"],
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_time_s": round(elapsed, 3),
            "train_volumes_per_s": round(seen / elapsed, 3) if elapsed > 0 else None,
        }
        history.append(record)
        with open(run.metrics, "a") as f:
            f.write(json.dumps(record) + "\n")
        meta = {**meta_base, "epoch": epoch, "metrics": record}
        save_checkpoint(run.checkpoint("last"), model, meta)
        if best is None or _is_better(record, best):
            best = record
            save_checkpoint(run.checkpoint("best"), model, meta)
            _write_val_predictions(run.val_predictions, val, datalist.classes)
        callbacks.on_epoch_end({**record, "best_epoch": best["epoch"]})
    assert best is not None
    return TrainResult(run.root, best["epoch"], best, history)


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


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
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


def _train_epoch(model, loader, optimizer, scheduler, scaler, loss_fn, device, amp, on_step) -> tuple[float, int]:
    model.train()
    total, seen = 0.0, 0
    for step, batch in enumerate(loader, start=1):
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        with autocast(device, amp):
            loss = loss_fn(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total += loss.item() * len(labels)
        seen += len(labels)
        on_step(step, loss.item())
    return total / max(1, seen), seen


@torch.no_grad()
def predict_loader(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool) -> dict[str, Any]:
    """Logits of every case in ``loader`` (whole-volume inference), with labels and case ids."""
    model.eval()
    logits, labels, ids = [], [], []
    for batch in loader:
        with autocast(device, amp):
            out = model(batch["image"].to(device))
        logits.append(out.float().cpu())
        labels.append(batch["label"])
        ids.extend(batch["case_id"])
    return {"logits": torch.cat(logits), "labels": torch.cat(labels), "case_ids": ids}


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    amp: bool,
    class_names: Sequence[str],
    loss_fn: nn.Module,
) -> dict[str, Any]:
    """Loss, probabilities and metrics over a labelled loader."""
    out = predict_loader(model, loader, device, amp)
    probs = torch.softmax(out["logits"], dim=1)
    loss = float(loss_fn(out["logits"], out["labels"]))
    metrics = classification_metrics(out["labels"].numpy(), probs.numpy(), list(class_names))
    return {"loss": loss, "metrics": metrics, "probs": probs, **out}


def _write_val_predictions(path: Path, val: dict[str, Any], class_names: Sequence[str]) -> None:
    from medconvnext.engine.predictions import write_prediction_table

    labels = [class_names[i] for i in val["labels"].tolist()]
    write_prediction_table(path, val["case_ids"], val["probs"].numpy(), class_names, labels=labels)
