"""Atomic file writes and the manifest of what was written: the one place that knows how (a leaf module: data,
engine and reports all use it).

A file is written under a temporary name in its own folder, fsynced (optional), then renamed over the final
name, so a reader (or a crash) never sees half a file; the temporary file is removed if the write fails.

The manifest (pip's ``RECORD`` is the model): a folder the toolkit owns (a run, a fold, an ``evaluate`` folder, an
import) holds :data:`MANIFEST`, listing every file the toolkit wrote there with its sha256 digest. Every write of
this module into such a folder records the file, so no caller can forget it; ``--overwrite`` (see
:mod:`medconvnext.rundir`) deletes only listed files whose bytes still match, so a file the user added or changed
is never deleted. A folder without a manifest is never recorded into (the data cache, a user's folder).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

# the one run-folder file name this module knows (medconvnext.rundir knows all the others)
MANIFEST = "medconvnext_manifest.json"
MANIFEST_FORMAT = 1
# sub-folders (fold_0, repeat_1/fold_2) register with a manifest at most this many levels up: a run never nests
# deeper, and a manifest further up belongs to something else
_PARENT_LEVELS = 2
_lock = threading.Lock()  # manifest updates of this process's threads (background plots, loaders) never interleave


def _umask() -> int:
    """The process's umask: from /proc on Linux (reading it with os.umask means setting it, which races with other
    threads creating files), else set and restored at once."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], Any], fsync: bool = True) -> None:
    """Call ``write(tmp_path)``, fsync (unless ``fsync=False``), then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; the file gets the mode open() would give it
    try:
        write(Path(tmp))
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    record(path)


def append_text(path: str | Path, text: str) -> None:
    """Append ``text`` to ``path`` (a log such as ``metrics.jsonl``) and record its new digest."""
    path = Path(path)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
    record(path)


def remove(path: str | Path) -> None:
    """Delete a file the toolkit wrote (missing is fine) and drop it from its folder's manifest."""
    path = Path(path)
    path.unlink(missing_ok=True)
    folder = path.parent
    if (folder / MANIFEST).is_file():
        with _manifest(folder) as manifest:
            manifest["files"].pop(path.name, None)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The manifest of ``folder``, or None when it has none (or one that is not the toolkit's)."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return None
    manifest.setdefault("folders", [])
    return manifest


def start_manifest(folder: str | Path, kind: str, register: bool = True) -> None:
    """Give ``folder`` a manifest (kept when it has one: a resumed run goes on with its own) and, with ``register``,
    register the folder with the manifest up to two levels up (a fold with its cross-validation), so the folder is
    deleted with it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if read_manifest(folder) is None:
        _write_manifest(folder, {"format": MANIFEST_FORMAT, "written_by": "medconvnext", "kind": kind,
                                 "state": "", "files": {}, "folders": []})
    for level, parent in enumerate(folder.parents):
        if level >= _PARENT_LEVELS or not register:
            break
        if (parent / MANIFEST).is_file():
            name = folder.relative_to(parent).as_posix()
            with _manifest(parent) as manifest:
                if name not in manifest["folders"]:
                    manifest["folders"].append(name)
            break


def set_state(folder: str | Path, state: str) -> None:
    """Note what the run in ``folder`` is doing (``running``, ``complete``), so a rerun can tell an interrupted
    run (continue it with ``--resume``) from a finished one."""
    if (Path(folder) / MANIFEST).is_file():
        with _manifest(Path(folder)) as manifest:
            manifest["state"] = state


def record(path: str | Path, root: str | Path | None = None) -> None:
    """Record ``path`` (a file the toolkit has just written) in the manifest of ``root`` (default: its folder),
    when that folder has one; ``root`` may be a folder above, e.g. for the TensorBoard logs of a run."""
    record_many([Path(path)], Path(root) if root is not None else Path(path).parent)


def record_many(paths: Iterable[Path], root: Path) -> None:
    """Record many files of one folder at once (one manifest write, e.g. the volumes of an import)."""
    if not (root / MANIFEST).is_file():
        return
    entries = {p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
               for p in paths if p.is_file() and p.name != MANIFEST}
    with _manifest(root) as manifest:
        manifest["files"].update(entries)


def matches(path: Path, entry: dict[str, Any]) -> bool:
    """True when ``path`` still holds the bytes the manifest recorded for it (a file the user changed: False)."""
    try:
        return (path.is_file() and not path.is_symlink() and path.stat().st_size == entry.get("bytes")
                and sha256_file(path) == entry.get("sha256"))
    except OSError:
        return False


@contextlib.contextmanager
def _manifest(folder: Path) -> Iterator[dict[str, Any]]:
    """Read, change and atomically rewrite ``folder``'s manifest, under a lock on the folder (a ``report`` or
    ``predict`` writing into a run while it trains must not lose an entry)."""
    with _lock, _folder_lock(folder):
        manifest = read_manifest(folder)
        if manifest is None:
            raise FileNotFoundError(f"{folder / MANIFEST}: missing or unreadable")
        yield manifest
        _write_manifest(folder, manifest)


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: the in-process lock only
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # a filesystem without flock (some network mounts): the in-process lock
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    # renamed into place but not fsynced (it changes with every file): a crash can lose the last entries, and a file
    # missing from the manifest is only ever kept, never deleted
    text = json.dumps(manifest, indent=1, sort_keys=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, folder / MANIFEST)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_cache(path: str | Path, value: Any) -> None:
    """Write a cache file atomically; an OSError (e.g. a read-only cache folder) is ignored: a cache only saves
    time, and a reader treats a missing file as empty."""
    try:
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(value), encoding="utf-8"), fsync=False)
    except OSError:
        pass


def write_json(path: str | Path, value: Any) -> None:
    """Write ``value`` as indented JSON, atomically (and recorded in the folder's manifest)."""
    text = json.dumps(value, indent=2)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
