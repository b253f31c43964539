"""Atomic file writes: the one place that knows how (a leaf module: data, engine and reports all use it).

A file is written under a temporary name in its own folder, fsynced (optional), then renamed over the final
name, so a reader (or a crash) never sees half a file; the temporary file is removed if the write fails.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


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


def write_json_cache(path: str | Path, value: Any) -> None:
    """Write a cache file atomically; an OSError (e.g. a read-only cache folder) is ignored: a cache only saves
    time, and a reader treats a missing file as empty."""
    try:
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(value), encoding="utf-8"), fsync=False)
    except OSError:
        pass
