"""Feeding the model: DataLoader settings per device, plain batches, augmentation on the device, data-wait timing.

A GPU waits when one process reads, augments and collates (issue 14: 58 train volumes/s for the README's job on
an H200 with ``data.num_workers = 0``). On CUDA the loaders therefore get workers (from the CPU count), pinned
memory, persistent workers and a deeper prefetch; the host-to-device copies are ``non_blocking``. On CPU the
defaults stay as they were (no workers): the training itself uses every core there, and a worker only competes.

``data.augment_on = device`` runs the random augmentation (MONAI dictionary transforms, per case) on the batch
after it reached the training device, so the loader only indexes the cache and collates.

Every DataLoader of ``train`` and ``pretrain`` comes from :func:`make_loader` (:func:`training_loader` for the
shuffled batches): the device's options and :func:`seed_worker`, which gives each worker its own random streams.
Forked workers inherit a copy of every random state of the parent, MONAI's random transforms included, so
without it worker 1 replays worker 0's augmentation exactly (pytorch#5059; ``shared/bugs/18``). The random
transforms are seeded per epoch by :func:`seed_epoch` with :func:`epoch_seed`, which includes the rank.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from monai import transforms as mt
from monai.data import set_track_meta
from monai.data.meta_obj import get_track_meta
from torch.utils.data import DataLoader, DistributedSampler, WeightedRandomSampler, default_collate

from medconvnext.config import DataConfig
from medconvnext.data.transforms import IMAGE, augmentation_transforms
from medconvnext.engine import distributed as dist

MAX_AUTO_WORKERS = 8  # enough to feed one GPU with cached 32-128³ volumes; more mostly costs start-up time
CUDA_PREFETCH_FACTOR = 4


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers and schedulers set), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def auto_num_workers(device: torch.device, cpus: int | None = None, processes_per_node: int | None = None) -> int:
    """Loader workers when ``data.num_workers`` is null: 0 on CPU; on CUDA this process's share of the CPUs
    (split between the ``LOCAL_WORLD_SIZE`` processes of a torchrun node) less one for the training loop,
    at most :data:`MAX_AUTO_WORKERS`."""
    if device.type != "cuda":
        return 0
    cpus = available_cpus() if cpus is None else cpus
    per_node = processes_per_node or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(0, min(MAX_AUTO_WORKERS, cpus // max(1, per_node) - 1))


def loader_options(cfg: DataConfig, device: torch.device) -> dict[str, Any]:
    """Keyword arguments for a DataLoader on ``device``: workers, pinning, persistence, prefetch, collation.

    ``persistent_workers`` keeps the workers (and their copy of the dataset) across epochs; the random
    transforms in them are then seeded once per run rather than per epoch (see :func:`seed_worker`),
    which changes nothing for a run that is not resumed.
    """
    workers = auto_num_workers(device) if cfg.num_workers is None else cfg.num_workers
    options: dict[str, Any] = {"num_workers": workers, "collate_fn": plain_collate}
    if device.type == "cuda":
        options["pin_memory"] = True
        if workers > 0:
            options["persistent_workers"] = True
            options["prefetch_factor"] = CUDA_PREFETCH_FACTOR
    return options


def make_loader(dataset: Any, batch_size: int, cfg: DataConfig, device: torch.device, **options: Any) -> DataLoader:
    """The one DataLoader factory: ``cfg``'s options for ``device`` (:func:`loader_options`) and worker seeding
    (:func:`seed_worker`); ``options`` (sampler, shuffle, drop_last, generator) go to the DataLoader."""
    return DataLoader(dataset, batch_size=batch_size, worker_init_fn=seed_worker, **options,
                      **loader_options(cfg, device))


def training_loader(dataset: Any, batch_size: int, cfg: DataConfig, device: torch.device, seed: int,
                    generator: torch.Generator, weights: Sequence[float] | None = None) -> DataLoader:
    """Shuffled batches (class-balanced when ``weights`` are given, split over the ranks when distributed); the
    seeded ``generator`` makes the order reproducible. The last partial batch is dropped when a rank has more
    than one batch (a BatchNorm batch of one case fails)."""
    sampler: Any = None
    if dist.is_distributed():
        sampler = DistributedSampler(dataset, dist.world_size(), dist.rank(), shuffle=True, seed=seed)
    elif weights is not None:
        sampler = WeightedRandomSampler(list(weights), num_samples=len(dataset), replacement=True, generator=generator)
    per_rank = math.ceil(len(dataset) / dist.world_size())  # what a DistributedSampler gives each rank
    return make_loader(dataset, batch_size, cfg, device, shuffle=sampler is None, sampler=sampler,
                       drop_last=per_rank > batch_size, generator=generator)


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """The seed of the random transforms of ``epoch`` on this rank (``stream`` tells two generators apart): a
    resumed run augments exactly as an uninterrupted one, and ranks draw different augmentations."""
    salt, step = ((100_003, 1_009), (100_019, 1_013))[stream]
    return (seed * salt + epoch * step + dist.rank()) % 2**32


def split_augmentation(cfg: DataConfig, input_size: Sequence[int]) -> tuple[str, BatchAugment | None]:
    """Where ``data.augment`` runs: (the preset the loader's transforms apply, the on-device augmentation or None).

    ``data.augment_on = device``: the loader's transforms stop before the augmentation ("none"), which then runs
    per case on the batch in the training step (``train`` and ``pretrain`` alike)."""
    if cfg.augment_on == "device":
        return "none", BatchAugment(augmentation_transforms(cfg.augment, input_size))
    return cfg.augment, None


def seed_epoch(seed: int, epoch: int, loader: Any, transform: Any, augment: BatchAugment | None = None) -> None:
    """Seed ``epoch``'s augmentation on this rank (``train`` and ``pretrain`` alike): the loader's random
    ``transform`` and the on-device ``augment`` (:func:`epoch_seed`, two streams), and a distributed sampler.

    MONAI's random transforms keep their own RandomState objects: seeded per epoch, the augmentation of epoch e
    is the same whether or not the run was resumed before it.
    """
    if hasattr(transform, "set_random_state"):
        transform.set_random_state(seed=epoch_seed(seed, epoch))
    if augment is not None:
        augment.set_random_state(seed=epoch_seed(seed, epoch, stream=1))
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)


def seed_worker(worker_id: int) -> None:
    """Give each loader worker its own reproducible random streams: torch seeds each worker from the loader's
    generator (base seed + worker id); Python's, NumPy's and the dataset's MONAI transforms are seeded from it."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    info = torch.utils.data.get_worker_info()
    dataset = info.dataset if info is not None else None
    transform = getattr(dataset, "transform", None)
    if hasattr(transform, "set_random_state"):
        transform.set_random_state(seed=seed)


def plain_collate(batch: Sequence[Any]) -> Any:
    """``default_collate`` of the cases with MONAI MetaTensors turned into plain tensors first.

    The metadata is not used after the transforms, a plain tensor is cheaper to send from a worker and to pin,
    and ``torch.compile`` fails on MetaTensor inputs (issue 14).
    """
    return default_collate([plain(item) for item in batch])


def plain(value: Any) -> Any:
    """MONAI MetaTensors (also inside a dict) as plain tensors; anything else unchanged."""
    if isinstance(value, dict):
        return {key: plain(v) for key, v in value.items()}
    if isinstance(value, torch.Tensor) and hasattr(value, "as_tensor"):
        return value.as_tensor()
    return value


class BatchAugment:
    """MONAI dictionary random transforms applied to each case of a batch that is already on its device.

    The transforms draw their random parameters from their own NumPy generators (seeded like the loader's with
    :meth:`set_random_state`), so a run is as reproducible as with ``data.augment_on = loader``; the tensors
    themselves never leave the device. Input and output (N, C, D, H, W).
    """

    def __init__(self, transforms: Sequence[mt.Transform]) -> None:
        self.transform = mt.Compose(list(transforms))

    def set_random_state(self, seed: int) -> None:
        self.transform.set_random_state(seed=seed)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if not self.transform.transforms:
            return images
        tracking = get_track_meta()
        set_track_meta(False)  # plain tensors in and out: no metadata bookkeeping per case and transform
        try:
            cases = [self.transform({IMAGE: image})[IMAGE] for image in images]
        finally:
            set_track_meta(tracking)
        return torch.stack([plain(case) for case in cases])


class DataWait:
    """Time spent waiting for the next batch, as a share of the time of the whole loop over a loader.

    Usage: ``for batch in wait.iterate(loader): ...`` then ``wait.share``. The wait includes starting the
    loader's workers; the loop time includes the steps, which synchronise with the device each step.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.wait_s = 0.0
        self.started: float | None = None
        self.ended: float | None = None

    def iterate(self, loader: Iterable) -> Iterator:
        self.started = self.clock()
        iterator = iter(loader)
        while True:
            before = self.clock()
            try:
                batch = next(iterator)
            except StopIteration:
                self.ended = self.clock()
                return
            self.wait_s += self.clock() - before
            yield batch

    @property
    def share(self) -> float | None:
        """Waiting time / loop time, in [0, 1]; None before the loop ran."""
        if self.started is None:
            return None
        elapsed = (self.ended if self.ended is not None else self.clock()) - self.started
        return self.wait_s / elapsed if elapsed > 0 else None
