"""Datasets over a datalist, with the deterministic transforms cached (memory or disk) or not."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from monai.data import CacheDataset, Dataset
from monai.transforms import Compose

from medconvnext.data.datalist import Case, Datalist
from medconvnext.errors import UserError

CACHE_MODES = ("none", "memory", "disk")


def case_records(datalist: Datalist, cases: Sequence[Case]) -> list[dict]:
    """MONAI data dicts: image path(s), label index, case id."""
    records = []
    for case in cases:
        image = case.images[0] if len(case.images) == 1 else list(case.images)
        label = datalist.label_index(case) if case.label is not None else -1
        records.append({"image": image, "label": label, "case_id": case.case_id})
    return records


def make_dataset(
    records: list[dict], transform: Compose, cache: str, num_workers: int = 0, cache_dir: str | Path | None = None
) -> Dataset:
    """``cache="memory"`` keeps the output of the transforms up to the first random one in RAM; ``"disk"``
    keeps it in ``cache_dir`` (default ``$MEDCONVNEXT_CACHE_DIR`` or ``~/.cache/medconvnext``), keyed on the
    files' identities, the preprocessing (``transform.preprocessing``) and the library versions."""
    if cache == "disk":
        from medconvnext.data.cache import DiskCacheDataset, default_cache_dir

        pre = getattr(transform, "preprocessing", None)
        if pre is None:
            raise ValueError("data.cache=disk needs transforms built by the toolkit's pipelines (they carry the "
                             "preprocessing the cache key covers)")
        variant = getattr(transform, "cache_variant", "cropped")
        return DiskCacheDataset(records, transform, pre, cache_dir or default_cache_dir(), variant)
    if cache == "memory":
        return CacheDataset(records, transform, cache_rate=1.0, num_workers=max(1, num_workers), progress=False)
    if cache == "none":
        return Dataset(records, transform)
    raise UserError(f"data.cache must be one of {', '.join(CACHE_MODES)}, got {cache!r}")
