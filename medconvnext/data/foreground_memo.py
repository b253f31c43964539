"""What the plan learnt from a scan's voxels, remembered by the file's content: its foreground extent and CT samples.

Planning reads every training scan (:func:`~medconvnext.data.fingerprint.scan_foreground`: the foreground box and,
for CT, HU samples from inside the body); a full-size ``.nii.gz`` takes seconds to decode, so a second ``train``
on the same data, every fold of ``cv`` and every ``tune`` trial paid that read again. Each case's result is stored
in ``<cache dir>/foreground/<key>.npz`` (beside the validation memo ``image_checks.json``; default
``$MEDCONVNEXT_CACHE_DIR`` or ``~/.cache/medconvnext``), the key covering:

- the digest of the file's bytes (:mod:`medconvnext.data.content`): a rewritten scan is read again;
- its name's suffix (it chooses the reader), the orientation, the crop mode, whether CT samples were taken, the
  sample count and stride, and the seed;
- the source of :mod:`medconvnext.data` and the versions of the libraries that read, orient and sample the voxels.

An entry is written atomically (a temporary file renamed into place) and checked when read: an unreadable file, a
key, shape, dtype or value that does not fit is ignored and the scan is read again. A read-only cache folder only
costs the reads. ``medconvnext cache clear --memos`` forgets every entry (:func:`~medconvnext.data.cache.clear_memos`).
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np

from medconvnext.data.content import source_digest
from medconvnext.fileio import atomic_write

MEMO_FOLDER = "foreground"
MEMO_FORMAT = 1
LIBRARIES = ("numpy", "scipy", "nibabel", "SimpleITK", "monai", "torch")  # read, orient, label and sample voxels


def memo_key(content: str, name: str, settings: dict[str, object]) -> str:
    """Hex key of one scan's entry: its content digest, its name's suffix (the reader), the planning ``settings``
    (orientation, crop, samples, seed: JSON-like scalars) and the code and library versions that compute it."""
    suffix = "".join(Path(name).suffixes[-2:]).lower()
    fields = "|".join(f"{k}={settings[k]!r}" for k in sorted(settings))
    text = f"{MEMO_FORMAT}|{source_digest(LIBRARIES)}|{content}|{suffix}|{fields}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def entry_path(memo_dir: Path, key: str) -> Path:
    """Where the entry of ``key`` lives under ``memo_dir``."""
    return memo_dir / MEMO_FOLDER / f"{key}.npz"


def load_entry(memo_dir: Path, key: str, max_samples: int, samples: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """(extent: 3 float64 mm, samples: 1-D float32, empty unless ``samples``) of ``key``, or None when it is
    missing or does not fit (another key, shape, dtype, a non-finite or negative value, more than
    ``max_samples`` samples, none where ``samples`` asks for them): an entry is never trusted blindly."""
    try:
        with np.load(entry_path(memo_dir, key), allow_pickle=False) as stored:
            found = {name: stored[name] for name in ("key", "extent", "samples")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    extent, values = found["extent"], found["samples"]
    fits = (found["key"].shape == () and str(found["key"]) == key
            and extent.dtype == np.float64 and extent.shape == (3,) and bool(np.isfinite(extent).all())
            and bool((extent >= 0).all())
            and values.dtype == np.float32 and values.ndim == 1 and values.size <= max_samples
            and (values.size > 0) == samples and bool(np.isfinite(values).all()))
    return (extent, values) if fits else None


def save_entry(memo_dir: Path, key: str, extent: np.ndarray, samples: np.ndarray) -> None:
    """Store an entry atomically; an OSError (a read-only cache folder, a full disk) is ignored: the memo only
    saves reads."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to the temporary name
            np.savez(f, key=np.array(key), extent=np.asarray(extent, np.float64),
                     samples=np.asarray(samples, np.float32))

    try:
        atomic_write(entry_path(memo_dir, key), write, fsync=False)
    except OSError:
        pass
