"""What a file holds, as a digest: the key of every cache that must never serve stale data.

A file's *identity* (path, size, modification time) is not its content: ``cp -p``, ``rsync -a`` and ``tar x``
restore the source's modification time, and scans of one shape and data type have the same size, so a corrected
scan copied over an old one keeps all three. The disk cache, the leakage audit's voxel hashes and the validation
results are therefore keyed by a **BLAKE2b digest of the file's bytes** (of every file of a DICOM folder, and of
every file a header names as its data: a MetaImage ``.mhd``'s ``ElementDataFile``, an NRRD header's ``data file``,
an Analyze / NIfTI ``.hdr``/``.img`` pair; :mod:`medconvnext.data.detached`).

Hashing the bytes costs a fraction of decoding them (``bench/bench_content_hash.py``: about a tenth of a
gzip read on a 512x512x300 CT-sized ``.nii.gz``), and it is not repeated for an unchanged file: the digest is
memoised per resolved path together with the file's size, mtime, **ctime**, inode and device, as git's index
does. The kernel sets ctime on every write, rename or metadata change and no user program can set it back
(``utime`` sets only atime and mtime), so a rewritten file always misses the memo, even when its size and mtime
were restored. A file whose ctime lies within :data:`RACY_SECONDS` of the moment it was hashed is not memoised
(git's "racily clean" rule: on a file system with coarse timestamps a rewrite within the same tick could keep
all five values). The memo lives in the process and in ``<cache dir>/file_digests.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

from medconvnext.data.io import ImageError
from medconvnext.fileio import write_json_cache

__all__ = ["DIGEST_NAME", "RACY_SECONDS", "file_digest", "file_digests", "source_digest"]

DIGEST_NAME = "blake2b-128"
RACY_SECONDS = 2.0
MEMO_NAME = "file_digests.json"
MEMO_FORMAT = 1
CHUNK = 1 << 20

_memo: dict[str, tuple[list, str]] = {}  # resolved path -> (stat identity, digest), for this process


def default_memo_dir() -> Path:
    """``$MEDCONVNEXT_CACHE_DIR``, else ``~/.cache/medconvnext`` (the disk cache's folder)."""
    return Path(os.environ.get("MEDCONVNEXT_CACHE_DIR") or Path.home() / ".cache" / "medconvnext").expanduser()


@lru_cache(maxsize=8)
def source_digest(libraries: Sequence[str]) -> str:
    """BLAKE2b-128 hex digest of the source of :mod:`medconvnext.data` and of the installed versions of
    ``libraries`` (distribution names, a tuple): part of the key of every memo of what the code computed from a
    file, so that a change to a reader, a check or a library computes it again. A library that is not installed
    counts as version ``-``."""
    from importlib.metadata import PackageNotFoundError, version

    digest = hashlib.blake2b(digest_size=16)
    for source in sorted(Path(__file__).resolve().parent.glob("*.py")):
        digest.update(source.name.encode() + source.read_bytes())
    for name in libraries:
        try:
            digest.update(f"|{name}={version(name)}".encode())
        except PackageNotFoundError:
            digest.update(f"|{name}=-".encode())
    return digest.hexdigest()


def _files(path: Path) -> list[Path]:
    """Every file whose bytes become the image's voxels: the file itself and the data files its header names
    (:func:`~medconvnext.data.detached.data_files`), or every file of a folder (a DICOM series), sorted by name."""
    from medconvnext.data.detached import data_files

    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file())
    return [path, *data_files(path)]


def _name(path: Path, f: Path) -> str:
    """``f``'s name relative to the image's folder (a header's data file may sit in a subfolder)."""
    base = path if path.is_dir() else path.parent
    return os.path.relpath(f, base)


def _identity(path: Path) -> tuple[list, float]:
    """(per file: name, size, mtime_ns, ctime_ns, inode, device; the newest ctime in seconds)."""
    rows, newest = [], 0.0
    for f in _files(path):
        st = f.stat()
        rows.append([_name(path, f), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev])
        newest = max(newest, st.st_ctime)
    return rows, newest


def _hash_bytes(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _hash(path: Path) -> str:
    files = _files(path)
    if not path.is_dir() and len(files) == 1:
        return _hash_bytes(path)  # a self-contained file: its bytes
    digest = hashlib.blake2b(digest_size=16)  # a series or a header + data: names and contents, in order
    for f in files:
        digest.update(f"{_name(path, f)}\0{_hash_bytes(f)}\0".encode())
    return digest.hexdigest()


def _load_memo(path: Path) -> dict:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(values, dict) or values.get("format") != MEMO_FORMAT or not isinstance(values.get("files"),
                                                                                              dict):
        return {}
    return values["files"]


def _save_memo(path: Path, files: dict) -> None:
    """Atomically (concurrent writers lose updates, never data); entries of vanished files are dropped; a
    read-only cache folder is ignored (the memo only saves time)."""
    kept = {p: v for p, v in files.items() if Path(p).exists()}
    write_json_cache(path, {"format": MEMO_FORMAT, "digest": DIGEST_NAME, "files": kept})


def file_digests(paths: Iterable[str | Path], cache_dir: str | Path | None = None,
                 skip_unreadable: bool = False) -> dict[str, str]:
    """Resolved path -> BLAKE2b-128 hex digest of the file's bytes (a folder: of its files' names and bytes).

    Raises OSError for a path that cannot be read (ImageError, a UserError, for a header whose data file is missing or
    outside its folder), or leaves it out with ``skip_unreadable``. ``cache_dir`` holds
    the persistent memo (default ``$MEDCONVNEXT_CACHE_DIR`` or ``~/.cache/medconvnext``). Pass every path in one
    call: the memo file is read and written once per call.
    """
    out: dict[str, str] = {}
    pending: list[tuple[Path, list, float]] = []
    queued: set[str] = set()
    for raw in paths:
        path = Path(raw).resolve()
        key = str(path)
        if key in out or key in queued:
            continue
        try:
            identity, newest = _identity(path)
        except (OSError, ImageError):  # ImageError: a header's data file is missing or outside its folder
            if skip_unreadable:
                continue
            raise
        memo = _memo.get(key)
        if memo is not None and memo[0] == identity:
            out[key] = memo[1]
        else:
            pending.append((path, identity, newest))
            queued.add(key)
    if not pending:
        return out
    memo_path = Path(cache_dir).expanduser() / MEMO_NAME if cache_dir is not None else default_memo_dir() / MEMO_NAME
    stored = _load_memo(memo_path)
    changed = False
    for path, identity, newest in pending:
        key = str(path)
        entry = stored.get(key)
        if isinstance(entry, dict) and entry.get("identity") == identity and isinstance(entry.get("digest"), str):
            digest = entry["digest"]
        else:
            started = time.time()
            try:
                digest = _hash(path)
            except (OSError, ImageError):
                if skip_unreadable:
                    continue
                raise
            if started - newest <= RACY_SECONDS:
                out[key] = digest  # racily clean: a rewrite within the same timestamp tick would look the same
                continue
            stored[key] = {"identity": identity, "digest": digest}
            changed = True
        _memo[key] = (identity, digest)
        out[key] = digest
    if changed:
        _save_memo(memo_path, stored)
    return out


def file_digest(path: str | Path, cache_dir: str | Path | None = None) -> str:
    """BLAKE2b-128 hex digest of one file's bytes (or of a DICOM folder's files); see :func:`file_digests`."""
    return file_digests([path], cache_dir)[str(Path(path).resolve())]
