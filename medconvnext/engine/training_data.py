"""The datasets and loaders of a training run: shuffled (class-balanced, distributed) training batches, this
rank's share of the validation cases (whole volumes, or uncropped for sliding windows), and the fixed training
batches on which an EMA's BatchNorm statistics are recomputed."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from medconvnext.config import Config
from medconvnext.data.dataset import case_records, make_dataset
from medconvnext.data.pipeline import PreprocessingPipeline
from medconvnext.engine import distributed as dist
from medconvnext.engine.ema import has_batchnorm
from medconvnext.engine.feeding import BatchAugment, loader_options, make_loader, split_augmentation, training_loader
from medconvnext.engine.setup import RunSetup
from medconvnext.engine.validation import Tiling

__all__ = ["TrainingData", "class_counts", "training_data"]


@dataclass
class TrainingData:
    """What the loop trains on and what the validation evaluates."""

    train_loader: DataLoader
    val_loader: DataLoader  # this rank's share (every world_size-th case); the results are gathered
    train_transform: Any  # the loader's random transforms (MONAI), seeded per epoch
    augment: BatchAugment | None  # the random augmentation on the device (data.augment_on=device), else None
    tiling: Tiling | None  # sliding-window validation of uncropped volumes, None for whole volumes
    class_counts: list[int]  # training cases per class, each at least 1
    bn_loader: DataLoader | None = None  # train.ema with BatchNorm: fixed training batches for the EMA's statistics


def warm_disk_cache(dataset: object, num_workers: int | None, sharded: bool = True) -> None:
    """Build a disk cache's missing entries before the first epoch, in parallel processes (``data.num_workers``,
    default: the CPUs of this rank, at most 4, since each holds one full-size scan); under torchrun each rank
    builds its share of a ``sharded`` dataset, then all wait for the others."""
    from medconvnext.data.cache import DiskCacheDataset

    if not isinstance(dataset, DiskCacheDataset):
        return
    workers = num_workers if num_workers else max(1, min(4, (os.cpu_count() or 1) // dist.world_size()))
    if sharded:
        dataset.warm(workers, dist.rank(), dist.world_size())
        dist.barrier()
    else:
        dataset.warm(workers)


def training_data(setup: RunSetup, generator: torch.Generator) -> TrainingData:
    """Build the run's datasets (filling the cache) and loaders; ``generator`` orders the training batches.

    Raises:
        UserError: bad ``inference.*`` settings.
    """
    config, plan, datalist, split, device = setup.config, setup.plan, setup.datalist, setup.split, setup.device
    by_id = {c.case_id: c for c in datalist.cases}
    train_records = case_records(datalist, [by_id[i] for i in split.train])
    val_records = case_records(datalist, [by_id[i] for i in split.val])
    loader_augment, augment = split_augmentation(config.data, plan.input_size)  # data.augment_on
    cfg = config.train
    train_transform = PreprocessingPipeline(plan).training(loader_augment, cfg.patches, cfg.mil_bag_size,
                                                           cfg.mil_foreground_share)
    feed = loader_options(config.data, device)  # the loaders' workers also fill the memory cache (threads)
    train_ds = make_dataset(train_records, train_transform, config.data.cache, feed["num_workers"],
                            cache_dir=config.data.cache_dir)
    warm_disk_cache(train_ds, config.data.num_workers)
    # whole: validate on the training input size; sliding/auto: on the full (uncropped) volumes; a MIL model
    # always pools every window of the full volume
    tiled = config.inference.mode != "whole" or cfg.patches == "mil"
    val_transform = PreprocessingPipeline(plan).deterministic("uncropped" if tiled else "cropped")
    # each rank evaluates (and caches) every world_size-th case; the results are gathered, so each case counts once
    val_part = make_dataset(val_records[dist.rank() :: dist.world_size()], val_transform, config.data.cache,
                            feed["num_workers"], cache_dir=config.data.cache_dir)
    warm_disk_cache(val_part, config.data.num_workers, sharded=False)
    counts = class_counts(train_records, len(datalist.classes))
    train_loader = _train_loader(train_ds, train_records, counts, config, generator, device)
    # uncropped volumes differ in size, so they go one at a time
    val_loader = make_loader(val_part, 1 if tiled else config.train.batch_size, config.data, device)
    tiling = (config.inference, plan.input_size) if tiled else None
    bn_loader = None
    if config.train.ema and config.train.ema_bn_batches > 0 and has_batchnorm(setup.model):
        bn_records = _bn_records(train_records, config.train.ema_bn_batches * config.train.batch_size)
        bn_ds = make_dataset(bn_records, PreprocessingPipeline(plan).deterministic("cropped"), config.data.cache,
                             feed["num_workers"], cache_dir=config.data.cache_dir)
        bn_loader = make_loader(bn_ds, config.train.batch_size, config.data, device)
    return TrainingData(train_loader, val_loader, train_transform, augment, tiling, counts, bn_loader)


def _bn_records(records: list[dict], cases: int) -> list[dict]:
    """This rank's share of a fixed, class-stratified choice of ``cases`` training cases (at most all), every rank
    the same number: a SyncBatchNorm in training mode must be called as often on every rank."""
    world = dist.world_size()
    per_rank = max(1, min(cases, len(records)) // world)
    return [records[i] for i in _stratified_order(records)[: per_rank * world]][dist.rank() :: world]


def _stratified_order(records: list[dict]) -> list[int]:
    """A fixed random order of ``records`` whose every prefix keeps the classes' shares (largest remainder).

    Why: the statistics of class-discriminative channels depend on the class mix, so a subset with another mix
    than the training set shifts the logits (a ConvNeXt's val accuracy fell from 0.888 to 0.816 on a random
    quarter of its training cases; docs/benchmarks.md)."""
    rng = np.random.default_rng(0)
    by_class: dict[Any, list[int]] = {}
    for i, r in enumerate(records):
        by_class.setdefault(r.get("label"), []).append(i)
    queues = {c: list(rng.permutation(ids)) for c, ids in sorted(by_class.items(), key=lambda kv: str(kv[0]))}
    share = {c: len(ids) / len(records) for c, ids in queues.items()}
    taken = dict.fromkeys(queues, 0)
    order = []
    for n in range(1, len(records) + 1):
        # the class furthest below its share of the first n cases goes next
        c = max((c for c in queues if taken[c] < len(queues[c])), key=lambda c: share[c] * n - taken[c])
        order.append(int(queues[c][taken[c]]))
        taken[c] += 1
    return order


def class_counts(records: list[dict], num_classes: int) -> list[int]:
    """Cases per class index in ``records``, at least 1 each (the inverse frequencies stay finite)."""
    counts = [0] * num_classes
    for r in records:
        counts[r["label"]] += 1
    return [max(1, c) for c in counts]


def _train_loader(
    train_ds: Any, records: list[dict], counts: list[int], config: Config, generator: torch.Generator,
    device: torch.device,
) -> DataLoader:
    """Shuffled (or class-balanced, or distributed) batches; the seeded generator makes the order reproducible."""
    weights = [1.0 / counts[r["label"]] for r in records] if config.train.balance == "sampler" else None
    return training_loader(train_ds, config.train.batch_size, config.data, device, config.train.seed, generator,
                           weights)
