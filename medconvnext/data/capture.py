"""What the imaging libraries say while reading one file, captured and reported as one line naming the file.

ITK, GDCM and OpenJPEG print warnings and errors from C++ straight to the process's stderr (file descriptor
2), repeated once per slice or per call and without the file's name; MONAI and nibabel raise Python
``UserWarning``\\ s the same way. :func:`library_output` captures both around one read: descriptor 2 is
pointed at a temporary file, and Python warnings are recorded. Afterwards, :func:`report` turns what was
captured into one :class:`ReaderWarning` naming the file (once per file and message per process); the raw
text rides along on the warning's ``raw`` attribute, which the CLI prints under ``--debug``. A reader that
fails can put :meth:`Captured.summary` in its error message instead.

Redirecting a file descriptor and recording warnings are process-wide, so both happen only in the main
thread (which is also where the DataLoader worker processes read): a read in another thread (MONAI's
thread pool filling a memory cache) is not captured. Those reads are of files the validation gate has
already read, captured, in the main thread.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

_lock = threading.RLock()  # reentrant: a DICOM read nested in a captured load
_reported: set[tuple[str, str]] = set()
# ITK's location header ("WARNING: In /path/itkFoo.hxx, line 502") and the object address that follows it
_ITK_LOCATION = re.compile(r"^(WARNING|ERROR): In .*, line \d+\s*$")
_ITK_OBJECT = re.compile(r"^(ITK ERROR: |ITK WARNING: )?\w+ \(0x[0-9a-f]+\): |^\w+\(0x[0-9a-f]+\): ")


class MedconvnextWarning(UserWarning):
    """Base of the library's own warnings: passed through a capture untouched."""


class ReaderWarning(MedconvnextWarning):
    """What an imaging library said while reading one file: one line naming the file; ``raw`` holds all of it."""

    def __init__(self, message: str, raw: str = "") -> None:
        super().__init__(message)
        self.raw = raw


@dataclass
class Captured:
    """Text a library printed on stderr and the foreign Python warnings raised during one read."""

    text: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def raw(self) -> str:
        """Everything captured, as printed."""
        return "\n".join([*self.warnings, self.text.strip()]).strip()

    def lines(self) -> list[str]:
        """Distinct meaningful lines, in order: ITK's source-location headers and object addresses dropped."""
        out: list[str] = []
        for line in [*self.warnings, *self.text.splitlines()]:
            line = _ITK_OBJECT.sub("", line.strip()).strip()
            if line and not _ITK_LOCATION.match(line) and line not in out:
                out.append(line)
        return out

    def summary(self, limit: int = 160, more: bool = True) -> str:
        """The first distinct line (shortened), plus (``more``) how many others there are; '' when nothing was
        said. An error message takes ``more=False``: the one line is its reason."""
        lines = self.lines()
        if not lines:
            return ""
        first = lines[0] if len(lines[0]) <= limit else lines[0][: limit - 3] + "..."
        return first + (f" (+{len(lines) - 1} more line(s); --debug shows them)" if more and len(lines) > 1 else "")

    def extend(self, other: Captured) -> None:
        """Add what ``other`` captured (one report for several steps of one read)."""
        self.text += other.text
        self.warnings += other.warnings

    def __bool__(self) -> bool:
        return bool(self.lines())


@contextmanager
def library_output() -> Iterator[Captured]:
    """Capture the C-level stderr and the foreign Python warnings of the block (main thread only).

    The library's own warnings (:class:`MedconvnextWarning`) raised in the block are re-issued unchanged.
    The :class:`Captured` is filled when the block ends, also when it raises.
    """
    captured = Captured()
    if threading.current_thread() is not threading.main_thread():
        yield captured
        return
    own: list[warnings.WarningMessage] = []
    with _lock, tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", "replace")
            for item in caught:
                if issubclass(item.category, MedconvnextWarning):
                    own.append(item)
                else:
                    captured.warnings.append(f"{item.category.__name__}: {item.message}")
    for item in own:
        warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)


def report(path: str, captured: Captured) -> None:
    """One :class:`ReaderWarning` ``"<path>: <what the library said>"`` (once per file and message)."""
    summary = captured.summary()
    if not summary or (str(path), summary) in _reported:
        return
    _reported.add((str(path), summary))
    warnings.warn(ReaderWarning(f"{path}: the image reader reported: {summary}", captured.raw), stacklevel=2)


@contextmanager
def reporting(path: str) -> Iterator[Captured]:
    """:func:`library_output` around a read that is expected to succeed, then :func:`report` (if it did)."""
    with library_output() as captured:
        yield captured
    report(path, captured)
