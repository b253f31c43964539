"""Datasets over a datalist, with the deterministic transforms cached (memory or disk) or not."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.data import CacheDataset, Dataset

from medconvnext.choices import Cache, choices
from medconvnext.data.datalist import Case, Datalist
from medconvnext.data.pipeline import PipelineVariant
from medconvnext.data.preprocessing import PreprocessingPlan
from medconvnext.errors import UserError

MEMORY_CACHE_SHARE = 0.5  # a memory cache may plan to take at most this share of the memory available


def available_memory() -> int:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``; elsewhere the physical memory)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory_cache(cases: int, pre: PreprocessingPlan, cache: str, available: int | None = None) -> None:
    """Refuse ``data.cache=memory`` when the planned volumes (``cases`` x input size x channels, float32) would
    take more than half of the memory available: a run must not be killed for memory hours in.

    Raises:
        UserError: one line with the planned and the available bytes, naming ``data.cache=disk``.
    """
    if cache != "memory":
        return
    planned = cases * pre.in_channels * 4 * int(np.prod(pre.input_size))
    available = available_memory() if available is None else available
    if planned > MEMORY_CACHE_SHARE * available:
        raise UserError(f"data.cache=memory would hold {cases} volumes of {' x '.join(map(str, pre.input_size))} "
                        f"voxels ({planned / 2**30:.1f} GiB) in RAM, more than half of the {available / 2**30:.1f} "
                        "GiB available: use --set data.cache=disk (compact, read back memory-mapped)")


def check_disk_cache(cases: int, pre: PreprocessingPlan, cache: str, cache_dir: str | Path | None,
                     free: int | None = None) -> None:
    """Refuse ``data.cache=disk`` when the planned entries (``cases`` x input size x channels, float16 or float32
    for raw intensities) do not fit the free space of the cache folder (its nearest existing parent).

    Raises:
        UserError: one line naming the folder, the planned and the free bytes, and ``data.cache_dir``.
    """
    if cache != "disk":
        return
    from medconvnext.data.cache import default_cache_dir

    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    bytes_per_voxel = 4 if pre.intensity == "none" else 2
    planned = cases * pre.in_channels * bytes_per_voxel * int(np.prod(pre.input_size))
    free = shutil.disk_usage(existing).free if free is None else free
    if planned > free:
        raise UserError(f"data.cache=disk: {folder} has {free / 2**30:.1f} GiB free and the cache of {cases} volumes "
                        f"needs about {planned / 2**30:.1f} GiB: free space there, or set data.cache_dir to a larger "
                        "disk")


def case_records(datalist: Datalist, cases: Sequence[Case]) -> list[dict]:
    """MONAI data dicts: image path(s), label index, case id."""
    records = []
    for case in cases:
        image = case.images[0] if len(case.images) == 1 else list(case.images)
        label = datalist.label_index(case) if case.label is not None else -1
        records.append({"image": image, "label": label, "case_id": case.case_id})
    return records


def make_dataset(
    records: list[dict], pipeline: PipelineVariant, cache: str, num_workers: int = 0,
    cache_dir: str | Path | None = None,
) -> Dataset:
    """A dataset running ``pipeline`` (a variant of :class:`~medconvnext.data.pipeline.PreprocessingPipeline`)
    on ``records``. ``cache="memory"`` keeps the output of its deterministic part in RAM; ``"disk"`` keeps it in
    ``cache_dir`` (default ``$MEDCONVNEXT_CACHE_DIR`` or ``~/.cache/medconvnext``), keyed on the files' contents,
    the plan, the variant (:attr:`~medconvnext.data.pipeline.PipelineVariant.cache_key`) and the library versions;
    ``"none"`` runs it all on every read.

    Raises:
        UserError: an unknown cache mode.
    """
    if cache == "disk":
        from medconvnext.data.cache import DiskCacheDataset, default_cache_dir

        return DiskCacheDataset(records, pipeline, cache_dir or default_cache_dir())
    if cache == "memory":
        # MONAI caches the output of the transforms up to the first random one: the deterministic part
        return CacheDataset(records, pipeline.transform, cache_rate=1.0, num_workers=max(1, num_workers),
                            progress=False)
    if cache == "none":
        return Dataset(records, pipeline.transform)
    raise UserError(f"data.cache must be one of {', '.join(choices(Cache))}, got {cache!r}")
