"""Import a MedMNIST 3D ``.npz`` (e.g. AdrenalMNIST3D) as NIfTI files + ``labels.csv`` with the official split.

Every MedMNIST 3D volume is a 64 mm cube, so the voxel size is 64 mm / side (28^3 -> 2.2857 mm, 64^3 -> 1 mm).
The array axes are written as the NIfTI's (x, y, z) with a diagonal (RAS) affine. ``train`` and ``val`` are
required; ``test`` is optional (a file whose test split is withheld, e.g. VesselMNIST3D's train + val, is valid:
runs then select on ``val`` and the withheld test scans are scored later with ``medconvnext predict``).
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medconvnext.errors import UserError
from medconvnext.fileio import MANIFEST, read_manifest, record_many, start_manifest
from medconvnext.rundir import RunDir, check_writable

CUBE_MM = 64.0
SPLITS = ("train", "val", "test")
REQUIRED_SPLITS = ("train", "val")


@dataclass
class ImportResult:
    """Counts per split and the voxel size written."""

    out: Path
    counts: dict[str, int]
    spacing: float
    shape: tuple[int, int, int]


def import_medmnist(
    npz: str | Path, out: str | Path, overwrite: bool = False, limit: int | None = None
) -> ImportResult:
    """Write ``out/images/<split>_<i>.nii.gz`` and ``out/labels.csv`` (image,label,split).

    The folder is built next to ``out`` and renamed into place, so a failure leaves nothing half-written.
    ``limit`` keeps only the first N volumes of each split (for quick tests).
    """
    npz, out = Path(npz).expanduser(), Path(out).expanduser()
    _check_out(out, overwrite)
    arrays = _read_npz(npz)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        result = _write(arrays, staging, limit)
        start_manifest(staging, "import", register=False)  # the import's own record: what --overwrite may delete
        record_many([p for p in staging.rglob("*") if p.is_file()], staging)
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    result.out = out
    return result


IMPORT_FILE = re.compile(r"labels\.csv|images/(train|val|test)_\d{4}\.nii\.gz")  # what an import writes


def _check_out(out: Path, overwrite: bool) -> None:
    """Before any work: ``out`` is new, empty, or an earlier import (its manifest) replaced with ``overwrite``; its
    files the user added or changed are kept, and one at a name the import writes is refused."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder; choose a new folder")
    check_writable(out, "--out")
    if not out.is_dir() or not any(out.iterdir()):
        return
    manifest = read_manifest(out)
    if manifest is None or manifest.get("kind") != "import":
        raise UserError(f"--out {out}: exists and is not an earlier MedMNIST import (no {MANIFEST} of one); "
                        "medconvnext never deletes files it did not write: choose a new folder")
    if not overwrite:
        raise UserError(f"--out {out}: holds an earlier import; pass --overwrite to replace it")
    clash = [p.as_posix() for p in RunDir(out).removal_plan()[1] if IMPORT_FILE.fullmatch(p.as_posix())]
    if clash:
        raise UserError(f"--out {out}: {clash[0]} changed since the import wrote it and would be replaced; "
                        "--overwrite never does: move it away first")


def _move_into_place(staging: Path, out: Path) -> None:
    """Rename the finished import into place; over an earlier one, delete that import's files (not the user's)
    and move the new files in beside what was kept."""
    if out.is_dir():
        RunDir(out).remove_run_files()
        if not any(out.iterdir()):
            out.rmdir()
    if not out.exists():
        staging.rename(out)
        return
    for path in sorted(staging.rglob("*")):
        if path.is_file():
            target = out / path.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    shutil.rmtree(staging)


def _read_npz(npz: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if not npz.is_file():
        raise UserError(f"{npz}: no such file")
    try:
        with np.load(npz) as data:
            keys = set(data.files)
            missing = [f"{s}_{kind}" for s in REQUIRED_SPLITS for kind in ("images", "labels")
                       if f"{s}_{kind}" not in keys]
            if missing:
                expected = "train/val (and optionally test) _images and _labels"
                raise UserError(f"{npz}: not a MedMNIST 3D file (missing key {missing[0]!r}; expected {expected})")
            if ("test_images" in keys) != ("test_labels" in keys):
                raise UserError(f"{npz}: has only one of test_images and test_labels; a test split needs both")
            arrays = {s: (data[f"{s}_images"], data[f"{s}_labels"]) for s in SPLITS if f"{s}_images" in keys}
    except (OSError, ValueError) as exc:
        raise UserError(f"{npz}: cannot read ({exc})") from None
    for split, (images, labels) in arrays.items():
        if images.ndim != 4 or len(images) != len(labels):
            raise UserError(f"{npz}: {split}_images has shape {images.shape}; expected (N, D, H, W) with N labels")
    return arrays


def _write(arrays: dict[str, tuple[np.ndarray, np.ndarray]], root: Path, limit: int | None) -> ImportResult:
    import nibabel as nib

    (root / "images").mkdir()
    shape = tuple(int(s) for s in arrays["train"][0].shape[1:])
    spacing = CUBE_MM / shape[0]
    affine = np.diag([spacing, spacing, spacing, 1.0])
    rows, counts = [], {}
    for split, (images, labels) in arrays.items():
        n = len(images) if limit is None else min(limit, len(images))
        counts[split] = n
        for i in range(n):
            name = f"images/{split}_{i:04d}.nii.gz"
            nib.save(nib.Nifti1Image(np.ascontiguousarray(images[i]), affine), root / name)
            rows.append((name, int(np.asarray(labels[i]).reshape(-1)[0]), split))
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "label", "split"])
        writer.writerows(rows)
    return ImportResult(root, counts, spacing, shape)  # type: ignore[arg-type]
