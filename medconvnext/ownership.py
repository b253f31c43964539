"""What medconvnext may delete or replace, and who writes a folder: ownership by the manifest, not by names.

A file is medconvnext's to delete only when a manifest (:data:`medconvnext.fileio.MANIFEST`: each file written, with
its digest) lists it with unchanged bytes; everything else is the user's and stays. :class:`RunLock` keeps one
writer per folder; :func:`check_writable` and :func:`check_output` refuse an output before any work.

Which *names* a run writes is :mod:`medconvnext.rundir`'s (``RunDir``); this module takes them as a predicate, so
it needs nothing of the run layout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from medconvnext.errors import UserError
from medconvnext.fileio import MANIFEST, matches, read_manifest

__all__ = ["LOCK", "MIN_FREE_BYTES", "RunLock", "check_output", "check_writable", "plan_removal", "remove_planned",
           "shown"]

MIN_FREE_BYTES = 16 * 2**20  # below this a run's first checkpoint would not fit: refused before any work
TEMP_PATTERN = re.compile(r"\.(.+)\.\w+\.tmp")  # fileio.atomic_write's temporary files (left by a killed write)
LOCK = "medconvnext.lock"  # held by the one process writing the run (see RunLock)


def plan_removal(root: Path, is_run_file: Callable[[str], bool]) -> tuple[list[Path], list[Path]]:
    """(files the toolkit may delete under ``root``, every other file relative to ``root``): what the manifests
    (of ``root`` and the folders registered in it) list with unchanged bytes, the manifests, and temporary files of
    a killed write of a listed file or of a name ``is_run_file`` accepts."""
    delete: list[Path] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        manifest = read_manifest(folder)
        if manifest is None:
            continue
        listed = manifest["files"]
        delete += [folder / rel for rel, entry in listed.items() if matches(folder / rel, entry)]
        delete.append(folder / MANIFEST)
        delete += [p for p in folder.iterdir() if p.is_file() and _is_temp(p.name, listed, is_run_file)]
        stack += [folder / sub for sub in manifest["folders"]
                  if (folder / sub).is_dir() and not (folder / sub).is_symlink()]
    gone = set(delete)
    kept = [Path(d, f).relative_to(root) for d, _, files in os.walk(root) for f in files
            if Path(d, f) not in gone and not (Path(d) == root and f == LOCK)]
    return delete, sorted(kept)


def remove_planned(root: Path, delete: list[Path]) -> None:
    """Delete ``delete`` (from :func:`plan_removal`) and the folders below ``root`` that this leaves empty."""
    for path in delete:
        path.unlink(missing_ok=True)
    owned = {parent for path in delete for parent in path.parents}
    for folder, _, _ in sorted(os.walk(root), key=lambda w: -len(Path(w[0]).parts)):
        folder_path = Path(folder)
        if folder_path != root and not any(folder_path.iterdir()) and folder_path in owned:
            folder_path.rmdir()


def _is_temp(name: str, listed: dict[str, object], is_run_file: Callable[[str], bool]) -> bool:
    match = TEMP_PATTERN.fullmatch(name)
    return bool(match) and (match.group(1) in listed or match.group(1) == MANIFEST or is_run_file(match.group(1)))


def shown(paths: list[Path], limit: int = 5) -> str:
    """Up to ``limit`` paths for a message, then how many more."""
    names = [p.as_posix() for p in paths]
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_writable(path: Path, option: str) -> None:
    """UserError (before any work) when ``path`` (a folder or file to be written) cannot be: its nearest existing
    folder is read-only or not a folder, or its disk is full. Probed by creating a file, as permissions alone lie
    (a read-only mount, root)."""
    path = Path(path)
    existing = path if path.is_dir() else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{option} {path}: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".medconvnext-probe.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"{option} {path}: cannot write in {existing} ({exc.strerror or exc}); "
                        "choose a writable location") from None
    if shutil.disk_usage(existing).free < MIN_FREE_BYTES:
        raise UserError(f"{option} {path}: no space left on the disk of {existing}; free some or choose another disk")


def check_output(path: Path, overwrite: bool, option: str = "--output") -> None:
    """Before any work: refuse to replace an existing file medconvnext did not write (not in its folder's manifest,
    or changed since) unless ``overwrite``; refuse a folder; and an unwritable location."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path}: is a folder; give a file name")
    check_writable(path, option)
    if not path.exists() or overwrite:
        return
    entry = (read_manifest(path.parent) or {"files": {}})["files"].get(path.name)
    if entry is None or not matches(path, entry):
        raise UserError(f"{option} {path}: exists, and medconvnext cannot tell that it wrote it (its folder's "
                        "medconvnext_manifest.json does not list it with these bytes); pass --overwrite to replace it, "
                        "or choose another name")


class RunLock:
    """``LOCK`` in a run folder while one process writes it: a second writer is refused with one line naming the
    holder; a lock left by a process that is gone (same host, pid not alive) is taken over."""

    def __init__(self, root: str | Path, option: str = "--out") -> None:
        self.root, self.option = Path(root), option
        self.path = self.root / LOCK
        self.created = False
        self.held = False

    def __enter__(self) -> RunLock:
        if os.environ.get("RANK", "0") != "0":  # under torchrun rank 0 writes the run, and holds its lock
            return self
        check_writable(self.root, self.option)
        self.created = not self.root.exists()
        self.root.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
            self.held = True
            return self
        self._take_over_if_stale()  # refuses: another process took it in between
        raise UserError(f"{self.option} {self.root}: could not take {self.path}; try again")

    def __exit__(self, *exc: object) -> None:
        if not self.held:
            return
        self.path.unlink(missing_ok=True)
        self.held = False
        if self.created and self.root.is_dir() and not any(self.root.iterdir()):
            self.root.rmdir()  # refused before anything was written: leave no empty folder behind

    def _take_over_if_stale(self) -> None:
        """Delete a lock of a dead process; UserError naming the holder of a live one."""
        try:
            holder = json.loads(self.path.read_text(encoding="utf-8"))
            pid, host = int(holder["pid"]), str(holder["host"])
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError):
            holder, pid, host = {}, -1, "?"
        if host == socket.gethostname() and not _alive(pid):
            self.path.unlink(missing_ok=True)
            return
        raise UserError(f"{self.option} {self.root}: in use by process {pid} on {host} (since "
                        f"{holder.get('started', '?')}); wait for it to finish, or delete {self.path} if that "
                        "process is gone")


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
