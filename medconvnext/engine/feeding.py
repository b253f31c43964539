"""Feeding the model: DataLoader settings per device, plain batches, augmentation on the device, data-wait timing.

A GPU waits when one process reads, augments and collates (issue 14: 58 train volumes/s for the README's job on
an H200 with ``data.num_workers = 0``). On CUDA the loaders therefore get workers (from the CPU count), pinned
memory, persistent workers and a deeper prefetch; the host-to-device copies are ``non_blocking``. On CPU the
defaults stay as they were (no workers): the training itself uses every core there, and a worker only competes.

``data.augment_on = device`` runs the random augmentation (MONAI dictionary transforms, per case) on the batch
after it reached the training device, so the loader only indexes the cache and collates.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from monai import transforms as mt
from monai.data import set_track_meta
from monai.data.meta_obj import get_track_meta
from torch.utils.data import default_collate

from medconvnext.config import DataConfig
from medconvnext.data.transforms import IMAGE
from medconvnext.errors import UserError

AUGMENT_ON = ("loader", "device")
MAX_AUTO_WORKERS = 8  # enough to feed one GPU with cached 32-128³ volumes; more mostly costs start-up time
CUDA_PREFETCH_FACTOR = 4


def check_data_options(cfg: DataConfig) -> None:
    """UserError naming the ``data.*`` feeding field that is wrong."""
    if cfg.augment_on not in AUGMENT_ON:
        raise UserError(f"data.augment_on must be one of {', '.join(AUGMENT_ON)}, got {cfg.augment_on!r}")
    if cfg.num_workers is not None and cfg.num_workers < 0:
        raise UserError(f"data.num_workers must be >= 0 (or null for automatic), got {cfg.num_workers}")


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
    transforms in them are then seeded once per run rather than per epoch (see the trainer's ``_seed_worker``),
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
