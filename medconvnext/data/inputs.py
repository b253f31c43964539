"""What ``predict`` accepts: scan files, folders of scans, DICOM series folders, or a CSV/TSV with an image column.

- a scan file (``.nii``, ``.nii.gz``, ``.nrrd``, ``.mha``, ``.mhd``): one scan;
- a folder holding DICOM files (by content: ``*.dcm``, ``IM0001``, ``*.IMA``): one DICOM series (one scan);
- any other folder: every scan below it, sorted (a subfolder holding DICOM files is one scan);
- a ``.csv`` / ``.tsv`` with an ``image`` column (or ``image_*`` columns, stacked as channels as in training):
  paths relative to the table; a ``label`` column, when present, is carried to the predictions.

Recognising DICOM folders and image suffixes is :mod:`medconvnext.data.datalist`'s job; this module only walks.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from medconvnext.data.datalist import IMAGE_SUFFIXES, case_id_from_path, is_image_file, read_table, resolve_path
from medconvnext.data.io import is_dicom_file, is_dicom_folder
from medconvnext.errors import UserError

TABLE_SUFFIXES = (".csv", ".tsv")


@dataclass(frozen=True)
class PredictionInput:
    """One case to predict: its image(s) (several = channels), and the label a table gave it, if any."""

    images: tuple[str, ...]
    label: str | None = None

    @property
    def image(self) -> str:
        """The (first) image: what the prediction table shows."""
        return self.images[0]

    @property
    def case_id(self) -> str:
        return case_id_from_path(self.images[0])


def resolve_prediction_inputs(paths: Iterable[str | Path]) -> list[PredictionInput]:
    """Expand files, folders and tables into cases, in the order given; UserError naming the bad path."""
    cases: list[PredictionInput] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            if path.is_symlink():
                resolve_path(path, str(raw))  # raises: names the symlink loop or the broken link
            raise UserError(f"{raw}: no such file or folder")
        if path.is_file() and path.suffix.lower() in TABLE_SUFFIXES:
            cases += read_prediction_table(path)
        elif path.is_dir() and not is_dicom_folder(path):
            found = scans_in_folder(path)
            if not found:
                raise UserError(f"{raw}: no scans in this folder (looked for {', '.join(IMAGE_SUFFIXES)} files and "
                                "folders of DICOM files, in every subfolder)")
            cases += [PredictionInput((str(p),)) for p in found]
        elif is_image_file(path):
            cases.append(PredictionInput((str(path),)))
        elif is_dicom_file(path):
            raise UserError(f"{raw}: a single DICOM file (one slice); give the folder holding its series (one folder "
                            "= one scan)")
        else:
            raise UserError(f"{raw}: not a scan ({', '.join(IMAGE_SUFFIXES)}, a DICOM folder), a folder of scans, "
                            "or a .csv/.tsv with an 'image' column")
    return cases


def scans_in_folder(folder: Path) -> list[Path]:
    """Every scan below ``folder``, sorted; a folder holding DICOM files is one scan (not descended into)."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        base = Path(root)
        for name in list(dirs):
            if is_dicom_folder(base / name):
                found.append(base / name)
                dirs.remove(name)
        found += [base / f for f in files if not f.startswith(".") and is_image_file(base / f)]
    return sorted(found)


def read_prediction_table(path: Path) -> list[PredictionInput]:
    """Rows of a CSV/TSV with ``image`` (or ``image_*``) columns and an optional ``label`` column."""
    columns, rows = read_table(path)  # UTF-8 or refused naming the row, as every table
    image_columns = [c for c in columns if c == "image" or c.startswith("image_")]
    if not image_columns:
        raise UserError(f"{path}: missing column 'image' (found: {', '.join(columns) or 'none'})")
    if not rows:
        raise UserError(f"{path}: no rows")
    cases = []
    for line, row in enumerate(rows, start=2):
        images = []
        for column in image_columns:
            value = (row.get(column) or "").strip()
            if not value:
                raise UserError(f"{path}, row {line}: empty {column!r}")
            candidate = path.parent / value
            if not candidate.exists() and not candidate.is_symlink():
                raise UserError(f"{path}, row {line}: image {value} not found (looked for {candidate.resolve()})")
            images.append(str(resolve_path(candidate, f"{path}, row {line}")))
        label = (row.get("label") or "").strip() or None
        cases.append(PredictionInput(tuple(images), label))
    return cases
