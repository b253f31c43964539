"""Files whose bytes become a scan's voxels besides the file the user names (detached data).

A MetaImage ``.mhd`` names its voxel file in ``ElementDataFile`` (``case.raw``; ``LOCAL`` = inline, ``LIST``
= one file per slice, or a ``%d`` pattern), an NRRD header (``.nhdr``, sometimes ``.nrrd``) in ``data file:``,
and an Analyze / NIfTI pair keeps its header in ``.hdr`` and its voxels in ``.img``. The content digest
(:mod:`medconvnext.data.content`: the key of the validation results, the disk cache and the leakage hashes)
must cover those files, or a rewritten ``.raw`` under an unchanged ``.mhd`` would be served stale.

A path read from a header is not trusted: it must stay inside the header's folder (no ``..`` out of it, no
absolute path elsewhere; checked on the path as written, so a symlinked data folder as DVC or git-annex make
is fine) and exist, else :class:`~medconvnext.data.image_errors.ImageError` names the header, the field and the path.
"""

from __future__ import annotations

import os
from pathlib import Path

from medconvnext.data.image_errors import ImageError

__all__ = ["HEADER_BYTES", "data_files"]

HEADER_BYTES = 1 << 16  # a text header is read up to here: MetaImage and NRRD headers are a few hundred bytes
PAIRS = {".hdr": ".img", ".img": ".hdr", ".hdr.gz": ".img.gz", ".img.gz": ".hdr.gz"}


def data_files(path: str | Path) -> list[Path]:
    """The files besides ``path`` that hold its voxels (or, for an ``.img``, its header); [] for a
    self-contained file (NIfTI ``.nii``, ``.mha``, an ``.mhd`` with ``ElementDataFile = LOCAL``, a DICOM file).

    Raises:
        ImageError: a named data file is missing or lies outside the header's folder.
    """
    path = Path(path)
    name = path.name.lower()
    for suffix, partner in PAIRS.items():
        if name.endswith(suffix) and not (suffix == ".img" and name.endswith(".img.gz")):
            other = _partner(path, len(suffix), partner)
            return [_checked(path, f"its {partner} pair", other.name)]
    if name.endswith(".mhd") or name.endswith(".mha"):
        return [_checked(path, "ElementDataFile", n) for n in _metaimage_names(path)]
    if name.endswith(".nhdr") or name.endswith(".nrrd"):
        return [_checked(path, "data file", n) for n in _nrrd_names(path)]
    return []


def _partner(path: Path, cut: int, partner: str) -> Path:
    """``case.hdr`` -> ``case.img`` (or ``case.IMG`` when that is the spelling on disk)."""
    stem = path.name[:-cut]
    for spelling in (partner, partner.upper()):
        if (path.parent / (stem + spelling)).exists():
            return path.parent / (stem + spelling)
    return path.parent / (stem + partner)


def _checked(header: Path, field: str, name: str) -> Path:
    """The data file ``name`` relative to ``header``'s folder, refused when it leaves it or is missing."""
    folder = os.path.normpath(header.parent.absolute())
    target = os.path.normpath(os.path.join(folder, name))
    if os.path.commonpath([folder, target]) != folder:
        raise ImageError(header, f"{field} {name!r} points outside the header's folder; keep the data file beside "
                                 "the header (a header's paths are not followed out of its folder)")
    if not os.path.isfile(target):
        raise ImageError(header, f"{field} {name!r} not found (looked for {target}); the voxels live in that file")
    return Path(target)


def _text_lines(path: Path) -> list[str]:
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
    except OSError as exc:
        raise ImageError(path, f"cannot read the header ({exc.strerror or exc})") from None
    return head.decode("latin-1").splitlines()


def _metaimage_names(path: Path) -> list[str]:
    """The voxel files of a MetaImage header (``ElementDataFile`` is its last field)."""
    lines = _text_lines(path)
    for k, line in enumerate(lines):
        key, sep, value = line.partition("=")
        if not sep or key.strip().lower() != "elementdatafile":
            continue
        value = value.strip()
        if value.upper() == "LOCAL":
            return []
        if value.split()[0].upper() == "LIST":
            return [n.strip() for n in lines[k + 1:] if n.strip()]
        return _pattern(value) or [value]
    return []


def _nrrd_names(path: Path) -> list[str]:
    """The voxel files of an NRRD header (``data file:`` / ``datafile:``); [] for attached data."""
    lines = _text_lines(path)
    if not lines or not lines[0].startswith("NRRD"):
        return []
    for k, line in enumerate(lines[1:], start=1):
        if not line.strip():
            return []  # the blank line ends the header: the data is attached
        key, sep, value = line.partition(":")
        if not sep or key.strip().lower() not in ("data file", "datafile"):
            continue
        value = value.strip()
        if value.split()[0].upper() == "LIST":
            return [n.strip() for n in lines[k + 1:] if n.strip()]
        return _pattern(value) or [value]
    return []


def _pattern(value: str) -> list[str]:
    """``slice%03d.raw 1 40 1`` (a printf pattern, first, last, step) -> the file names; [] for a plain name."""
    parts = value.split()
    if len(parts) < 4 or "%" not in parts[0]:
        return []
    try:
        first, last, step = (int(v) for v in parts[1:4])
        if step == 0 or abs(last - first) // abs(step) > 100_000:
            return []
        return [parts[0] % i for i in range(first, last + (1 if step > 0 else -1), step)]
    except (ValueError, TypeError):
        return []
