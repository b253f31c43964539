"""Content-aware disk cache of the deterministic transforms' output.

The key of an entry covers each input file's resolved path and the digest of its bytes
(:mod:`medconvnext.data.content`: BLAKE2b, memoised per size, mtime, ctime and inode), the concrete
:class:`PreprocessingPlan`, the pipeline variant (:attr:`~medconvnext.data.pipeline.PipelineVariant.cache_key`: the
crop mode and the steps) and the versions of the libraries that computed it, so a rewritten file (even one whose
size and modification time were restored, as ``cp -p`` and ``rsync -a`` do) or a changed preprocessing value is a
miss and never serves stale data (MONAI's PersistentDataset hashes only the data dict, i.e. the path). The path
stays in the key because an entry also holds the record's label and case id. Entries are written to a
temporary file and renamed into place; an unreadable entry is rebuilt. Several processes (DDP ranks) may share
one cache folder: each computes and writes only the items it reads, and the atomic rename makes concurrent
writes of the same entry harmless.

Entries are compact: a normalised image is stored as float16 (half the bytes of float32; its values lose nothing a
classifier can use) and read back memory-mapped, then as float32. Raw intensities (``intensity: none``: HU,
counts) and values beyond float16's range stay float32. :meth:`DiskCacheDataset.warm` builds the missing entries
in worker processes before training (under torchrun each rank builds its share).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from monai.data import Dataset

from medconvnext.data.pipeline import PipelineVariant
from medconvnext.data.preprocessing import PreprocessingPlan
from medconvnext.fileio import atomic_write

CACHE_FORMAT = 3  # 2: files keyed by content digest instead of size + mtime; 3: float16 images
FLOAT16_MAX = 60000.0  # float16 holds up to 65504: a volume with larger values is stored as float32
ENTRY_SUFFIX = ".pt"


def default_cache_dir() -> Path:
    """``$MEDCONVNEXT_CACHE_DIR``, else ``~/.cache/medconvnext``."""
    return Path(os.environ.get("MEDCONVNEXT_CACHE_DIR") or Path.home() / ".cache" / "medconvnext").expanduser()


def library_versions() -> dict[str, str]:
    """Versions whose change may change the preprocessed voxels."""
    import monai
    import nibabel
    import numpy
    import SimpleITK

    import medconvnext

    return {
        "medconvnext": getattr(medconvnext, "__version__", "0"),
        "monai": monai.__version__,
        "torch": torch.__version__.split("+")[0],
        "numpy": numpy.__version__,
        "nibabel": nibabel.__version__,
        "SimpleITK": SimpleITK.Version_VersionString(),
    }


def file_identity(path: str | Path, cache_dir: str | Path | None = None) -> list[str]:
    """[resolved path, content digest] of a file, or of a folder (a DICOM series: all its files' bytes)."""
    from medconvnext.data.content import file_digest

    resolved = Path(path).resolve()
    return [str(resolved), file_digest(resolved, cache_dir)]


def cache_key(record: dict, pre: PreprocessingPlan, versions: dict[str, str] | None = None,
              cache_dir: str | Path | None = None, pipeline: Sequence[str] = ()) -> str:
    """SHA-256 over the files' paths and content digests, the preprocessing, the deterministic part's
    ``pipeline`` key (:attr:`PipelineVariant.cache_key`: the cropped, uncropped and padded variants cache
    different volumes) and the library versions."""
    images = record["image"] if isinstance(record["image"], (list, tuple)) else [record["image"]]
    payload = {
        "format": CACHE_FORMAT,
        "files": [file_identity(image, cache_dir) for image in images],
        "preprocessing": pre.transform_dict(),
        "pipeline": list(pipeline),
        "versions": versions or library_versions(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class DiskCacheDataset(Dataset):
    """Dataset whose deterministic part is computed once and kept as one ``.pt`` file per case; the variant's
    random part (patch crop, augmentation) runs on every read."""

    def __init__(self, data: Sequence[dict], variant: PipelineVariant, cache_dir: str | Path) -> None:
        super().__init__(list(data), transform=None)
        self.deterministic, self.random = variant.deterministic, variant.random
        self.pipeline = list(variant.cache_key)
        self.pre = variant.preprocessing
        self.cache_dir = Path(cache_dir).expanduser()
        self.versions = library_versions()
        self.hits = 0
        self.misses = 0
        self.compact = variant.preprocessing.intensity != "none"  # float16 only for normalised values

    def entry_path(self, record: dict) -> Path:
        """Where the record's entry lives (depends on the files' current contents)."""
        key = cache_key(record, self.pre, self.versions, self.cache_dir, self.pipeline)
        return self.cache_dir / key[:2] / f"{key}{ENTRY_SUFFIX}"

    def _transform(self, index: int) -> dict:
        record = self.data[index]
        path = self.entry_path(record)
        item = self._load(path)
        if item is None:
            self.misses += 1
            # what a hit reads (float16-rounded): the first epoch sees the same volume as the later ones
            item = self._store(path, self.deterministic(dict(record)), self.compact)
        else:
            self.hits += 1
        return self.random(item) if self.random.transforms else item

    def warm(self, workers: int, rank: int = 0, world_size: int = 1) -> int:
        """Build the missing entries of this rank's share (every ``world_size``-th record) in ``workers``
        processes (forked: the pipeline need not pickle); returns how many were built. Memory: each worker holds
        one scan at a time."""
        missing = [i for i in range(rank, len(self.data), world_size) if not self.entry_path(self.data[i]).is_file()]
        if workers <= 1 or len(missing) <= 1:
            for index in missing:
                self._build(index)
            return len(missing)
        global _WARMING
        _WARMING = self
        try:
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(min(workers, len(missing)), mp_context=context) as pool:
                list(pool.map(_build_in_worker, missing))
        finally:
            _WARMING = None
        return len(missing)

    def _build(self, index: int) -> None:
        record = self.data[index]
        self._store(self.entry_path(record), self.deterministic(dict(record)), self.compact)

    @staticmethod
    def _load(path: Path) -> dict | None:
        if not path.is_file():
            return None
        try:
            item = torch.load(path, weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 - a truncated or corrupt entry is simply rebuilt
            return None
        return _expand(item)

    @staticmethod
    def _store(path: Path, item: dict, compact: bool = True) -> dict:
        """Write the entry; returns it as a later hit will read it (float16 values back as float32)."""
        plain = {k: v.as_tensor() if hasattr(v, "as_tensor") else v for k, v in item.items()}
        if compact:
            plain = {k: _compact(v) for k, v in plain.items()}
        # no fsync: a torn entry is detected on load and rebuilt
        atomic_write(path, lambda tmp: torch.save(plain, tmp), fsync=False)
        return _expand(plain)


_WARMING: DiskCacheDataset | None = None  # the dataset a forked warm-up worker builds entries of


def _build_in_worker(index: int) -> None:
    assert _WARMING is not None
    torch.set_num_threads(1)  # the workers share the cores
    _WARMING._build(index)


def _expand(item: dict) -> dict:
    """An entry's float16 tensors as float32 (what the pipeline's random part and the model expect)."""
    return {k: (v.float() if isinstance(v, torch.Tensor) and v.dtype == torch.float16 else v) for k, v in item.items()}


def _compact(value: object) -> object:
    """A float32 tensor as float16 when its values fit (see the module docstring)."""
    if isinstance(value, torch.Tensor) and value.dtype == torch.float32 and value.numel():
        if bool(torch.isfinite(value).all()) and float(value.abs().max()) <= FLOAT16_MAX:
            return value.half()
    return value


def cache_info(cache_dir: str | Path | None = None) -> dict:
    """Entries and bytes in a cache folder, and the memo files beside them (:func:`memo_files`)."""
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    entries = list(root.glob(f"*/*{ENTRY_SUFFIX}")) if root.is_dir() else []
    memos = memo_files(cache_dir)
    return {"path": str(root), "entries": len(entries), "bytes": sum(p.stat().st_size for p in entries),
            "memos": len(memos), "memo_bytes": sum(p.stat().st_size for p in memos)}


def clear_cache(cache_dir: str | Path | None = None) -> int:
    """Delete the cache's entries (only files this module writes); returns how many were removed."""
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    if not root.is_dir():
        return 0
    removed = 0
    for pattern in (f"*/*{ENTRY_SUFFIX}", "*/*.tmp"):
        for path in root.glob(pattern):
            path.unlink(missing_ok=True)
            removed += pattern.endswith(ENTRY_SUFFIX)
    for folder in root.iterdir():
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return removed


def memo_files(memo_dir: str | Path | None = None) -> list[Path]:
    """What medconvnext remembers about files by their content (the validation checks, the file digests, the
    leakage audit's voxel hashes and the plan's per-scan foreground memo, :mod:`~medconvnext.data.foreground_memo`),
    as the files that exist now."""
    from medconvnext.data.content import MEMO_NAME, default_memo_dir
    from medconvnext.data.foreground_memo import MEMO_FOLDER
    from medconvnext.data.leakage import HASH_CACHE_NAME
    from medconvnext.data.validate import CHECKS_CACHE_NAME

    root = Path(memo_dir).expanduser() if memo_dir else default_memo_dir()
    paths = [root / CHECKS_CACHE_NAME, root / MEMO_NAME, root / HASH_CACHE_NAME, *(root / MEMO_FOLDER).glob("*.npz")]
    return [p for p in paths if p.is_file()]


def clear_memos(memo_dir: str | Path | None = None) -> int:
    """Delete the :func:`memo_files` (all recomputed when next needed); only those names are touched. Returns how
    many files were removed."""
    removed = 0
    for path in memo_files(memo_dir):
        path.unlink(missing_ok=True)
        removed += 1
    return removed
