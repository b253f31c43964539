"""Datalists: which cases exist, their labels, subjects and splits.

Accepted forms of ``--data``:
- a folder holding ``labels.csv`` (or ``labels.tsv``): columns ``image,label`` and optionally
  ``subject`` and ``split`` (train/val/test); image paths relative to the list file;
- a CSV/TSV file itself; several images per case as columns ``image_t1,image_t2,...`` (stacked as channels);
- a MONAI-style JSON datalist (``datalist.json`` in the folder, or any ``.json`` given directly):
  ``{"training": [{"image": ..., "label": ...}], "validation": [...], "test": [...]}`` -> splits train/val/test;
- a folder with one subfolder per class, each holding the images of that class (an image may be a DICOM
  series: a subfolder of a class folder that holds DICOM files is one case; DICOM is recognised by content,
  so ``IM0001`` or ``*.IMA`` files count as well as ``*.dcm``).

Tables are UTF-8 (a BOM is allowed); a table in another encoding is refused naming the file and the row, as is an
image path that does not resolve (missing, a broken link, a symlink loop).

**Labels are text, compared exactly**, after surrounding spaces are stripped. Two spellings of one label, i.e.
labels equal as numbers (``01`` and ``1``, ``1.0`` and ``1``) or equal ignoring case (``Solid`` and ``solid``),
are refused with one line naming both spellings and where each occurs: merging them would have to choose one
spelling for the run's classes, and a model silently trained on ``['00', '0', '1', '01']`` is worse.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medconvnext.data.io import is_dicom_file, is_dicom_folder
from medconvnext.errors import UserError

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".hdr")
SPLITS = ("train", "val", "test")
LIST_NAMES = ("labels.csv", "labels.tsv", "datalist.json")
JSON_SPLITS = {"training": "train", "validation": "val", "test": "test"}


@dataclass(frozen=True)
class Case:
    """One labelled scan (or several co-registered scans stacked as channels)."""

    case_id: str
    images: tuple[str, ...]
    label: str | None
    subject: str | None = None
    split: str | None = None
    # the other columns of a label table (or keys of a JSON entry), e.g. for ``cv --group-by COLUMN``
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict:
        return asdict(self)

    def group(self, column: str | None = "subject") -> str | None:
        """The case's value in ``column`` (``subject`` or an extra column); None when empty or absent."""
        if column is None:
            return None
        value = self.subject if column == "subject" else self.extra.get(column)
        return value or None


@dataclass
class Datalist:
    """Cases plus the ordered class names (index i <-> ``classes[i]``)."""

    cases: list[Case]
    classes: list[str]
    source: str = ""
    extra: dict = field(default_factory=dict)

    def label_index(self, case: Case) -> int:
        return self.classes.index(case.label)

    def labels(self) -> list[int]:
        return [self.label_index(c) for c in self.cases]

    def columns(self) -> set[str]:
        """Names usable as a grouping column: ``subject`` when any case has one, plus the extra columns."""
        names = {"subject"} if any(c.subject for c in self.cases) else set()
        for case in self.cases:
            names.update(case.extra)
        return names


def is_image_file(path: Path) -> bool:
    """True when the name ends in a supported image suffix, or for a folder holding a DICOM series."""
    if path.is_dir():
        return is_dicom_folder(path)
    return path.name.lower().endswith(IMAGE_SUFFIXES)


def resolve_path(path: Path, where: str) -> Path:
    """``path`` resolved; UserError naming ``where`` when it is missing, a broken link or a symlink loop."""
    where = "" if where == str(path) else f"{where}: "
    try:
        resolved = path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13: "Symlink loop from ..."
        raise UserError(f"{where}{path} is a symlink loop (a link that leads back to itself); fix the link") from None
    except OSError as exc:
        if path.is_symlink():
            problem = "a symlink loop" if exc.errno == 40 else f"a broken symlink (to {os.readlink(path)})"
            raise UserError(f"{where}{path} is {problem}; fix the link") from None
        raise UserError(f"{where}{path} not found") from None
    return resolved


def read_table(path: Path) -> tuple[list[str], list[dict]]:
    """(columns, rows) of a UTF-8 CSV/TSV; UserError naming the file and the row for another encoding or a
    malformed table."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        row = raw[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}, row {row}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at position {exc.start}, "
                        "e.g. a latin-1 export); save the table as UTF-8 (Excel: 'CSV UTF-8')") from None
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        columns = [c for c in (reader.fieldnames or []) if c is not None]
        rows = list(reader)
    except csv.Error as exc:
        raise UserError(f"{path}, row {reader.line_num}: not a readable table ({exc})") from None
    return columns, rows


def _number(label: str) -> float | None:
    try:
        value = float(label)
    except ValueError:
        return None
    return value if value == value else None  # NaN is not a number to merge on


def _label_key(label: str) -> str:
    """What two spellings of one label share: the number (``01`` = ``1`` = ``1.0``), else the case-folded text."""
    value = _number(label)
    return label.casefold() if value is None else repr(value)


def same_label(label: str, classes: Iterable[str]) -> str | None:
    """The class in ``classes`` that is ``label`` written another way (``01`` for ``1``, ``Solid`` for ``solid``)."""
    return next((c for c in classes if c != label and _label_key(c) == _label_key(label)), None)


def check_label_spellings(labels: Iterable[tuple[str, str]], source: str) -> None:
    """UserError when two labels are one label written two ways; ``labels``: (label, where it occurs)."""
    first: dict[str, tuple[str, str]] = {}
    for label, where in labels:
        seen = first.setdefault(_label_key(label), (label, where))
        if seen[0] != label:
            how = "differ only in case" if _number(label) is None else "are the same number"
            raise UserError(f"{source}: labels {seen[0]!r} ({seen[1]}) and {label!r} ({where}) {how}: one class "
                            "written two ways; write one spelling for every case of that class")


def case_id_from_path(path: str | Path) -> str:
    """File name without the image suffix (``a/b/case_001.nii.gz`` -> ``case_001``)."""
    name = Path(path).name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def sort_class_names(names: set[str]) -> list[str]:
    """Deterministic class order: numeric when every name is an integer, else alphabetical."""
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def load_datalist(data: str | Path, for_training: bool = True) -> Datalist:
    """Read ``--data`` (folder or list file) into a :class:`Datalist`; UserError when it is unusable.

    ``for_training=False`` (evaluation data) skips the checks that only training needs: at least two
    classes, and every label present among the training cases.
    """
    path = Path(data).expanduser()
    if not path.exists():
        raise UserError(f"--data {path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() == ".json":
            return read_json_datalist(path, for_training)
        return read_label_table(path, for_training)
    for name in LIST_NAMES:
        if (path / name).is_file():
            return load_datalist(path / name, for_training)
    return read_class_folders(path, for_training)


def read_label_table(path: Path, for_training: bool = True) -> Datalist:
    """Read a ``labels.csv``/``.tsv`` with columns image,label[,subject][,split]."""
    columns, rows = read_table(path)
    image_columns = [c for c in columns if c == "image" or c.startswith("image_")]
    missing = [name for name, ok in (("image", image_columns), ("label", "label" in columns)) if not ok]
    for required in missing:
        raise UserError(f"{path}: missing column {required!r} (found: {', '.join(columns) or 'none'})")
    if not rows:
        raise UserError(f"{path}: no rows")
    cases, bad = [], []
    for line, row in enumerate(rows, start=2):  # every bad row at once, not one per run
        try:
            cases.append(_row_to_case(path, line, row, image_columns))
        except UserError as exc:
            bad.append(str(exc))
    if bad:
        raise UserError(_all_at_once(bad[0], [m.split(", ", 1)[-1] for m in bad[1:]]))
    check_label_spellings(((c.label, f"row {line}") for line, c in enumerate(cases, start=2) if c.label), str(path))
    return _finish(cases, str(path), for_training)


KNOWN_COLUMNS = ("image", "label", "subject", "split")


def _extra_columns(row: dict) -> dict[str, str]:
    """The row's other (non-image) columns with non-empty values."""
    extra = {}
    for key, value in row.items():
        if key is None or key in KNOWN_COLUMNS or key.startswith("image_") or value is None:
            continue
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and str(value).strip():
            extra[str(key)] = str(value).strip()
    return extra


def _row_to_case(list_path: Path, line: int, row: dict, image_columns: list[str]) -> Case:
    where = f"{list_path}, row {line}"
    images = [(row.get(column) or "").strip() for column in image_columns]
    label = (row.get("label") or "").strip()
    for column, image in zip(image_columns, images, strict=True):
        if not image:
            raise UserError(f"{where}: empty {column!r}")
    if not label:
        raise UserError(f"{where}: empty 'label'")
    split = (row.get("split") or "").strip().lower() or None
    if split is not None and split not in SPLITS:
        raise UserError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
    subject = (row.get("subject") or "").strip() or None
    paths = tuple(_resolve_image(list_path, where, image) for image in images)
    return Case(case_id_from_path(images[0]), paths, label, subject, split, _extra_columns(row))


def _resolve_image(list_path: Path, where: str, image: str) -> str:
    """Absolute path of an image named relative to the list file; UserError when it does not exist."""
    candidate = list_path.parent / image
    if not candidate.exists() and not candidate.is_symlink():
        raise UserError(f"{where}: image {image} not found (looked for {candidate.resolve()})")
    return str(resolve_path(candidate, where))


def read_json_datalist(path: Path, for_training: bool = True) -> Datalist:
    """MONAI-style JSON: sections ``training``/``validation``/``test``, entries ``{"image", "label"[, "subject"]}``.

    ``image`` may be a list (several images stacked as channels). Test entries may omit the label.
    """
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable JSON datalist ({exc})") from None
    if not isinstance(values, dict) or not any(key in values for key in JSON_SPLITS):
        raise UserError(f"{path}: expected an object with 'training' (and optionally 'validation', 'test') lists")
    cases, wheres = [], []
    for section, split in JSON_SPLITS.items():
        for i, entry in enumerate(values.get(section) or []):
            cases.append(_json_entry_to_case(path, f"{path}, {section}[{i}]", entry, split))
            wheres.append(f"{section}[{i}]")
    if not cases:
        raise UserError(f"{path}: no entries")
    check_label_spellings(((c.label, w) for c, w in zip(cases, wheres, strict=True) if c.label), str(path))
    return _finish(cases, str(path), for_training)


def _json_entry_to_case(path: Path, where: str, entry: object, split: str) -> Case:
    if not isinstance(entry, dict) or not entry.get("image"):
        raise UserError(f"{where}: expected an object with an 'image' field")
    images = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
    label = entry.get("label")
    if isinstance(label, list) and len(label) == 1:
        label = label[0]  # MONAI classification datalists often hold the label as a one-element list
    if label is None and split != "test":
        raise UserError(f"{where}: missing 'label'")
    subject = entry.get("subject")
    paths = tuple(_resolve_image(path, where, str(image)) for image in images)
    label_text = None if label is None else str(label).strip()
    return Case(case_id_from_path(images[0]), paths, label_text, str(subject) if subject else None, split,
                _extra_columns(entry))


def read_class_folders(root: Path, for_training: bool = True) -> Datalist:
    """One subfolder per class; every image file inside is a case of that class."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise UserError(
            f"--data {root}: no labels.csv/labels.tsv and no class subfolders; "
            "give a folder with one subfolder per class or a labels.csv with columns image,label"
        )
    cases, bad = [], []
    for folder in folders:
        data = _data_files_of_headers(folder)
        for file in sorted(folder.iterdir()):
            if file.name.startswith(".") or file in data:
                continue
            problem = _not_an_image(file)
            if problem:
                bad.append(f"{file}: {problem}")
                continue
            cases.append(Case(case_id_from_path(file), (str(resolve_path(file, str(folder))),), folder.name))
    if bad:  # every bad entry at once: a user fixing them one run at a time is not told how many are left
        kinds = ", ".join(IMAGE_SUFFIXES) + ", or a folder of DICOM files (a DICOM series)"
        raise UserError(f"{_all_at_once(bad[0], bad[1:])}; a case is an image file ({kinds})")
    if not cases:
        raise UserError(f"--data {root}: the class folders hold no images")
    check_label_spellings(((c.label, f"folder {c.label}/") for c in cases if c.label), str(root))
    return _finish(cases, str(root), for_training)


def _all_at_once(first: str, others: list[str], shown: int = 3) -> str:
    """One line for several problems: the first in full, then how many more and the next ``shown`` of them."""
    if not others:
        return first
    listed = "; ".join(others[:shown]) + (" ..." if len(others) > shown else "")
    return f"{first} (and {len(others)} more: {listed})"


def _not_an_image(path: Path) -> str:
    """Why an entry of a class folder is not a case ('' when it is one)."""
    if path.is_symlink() and not path.exists():
        return "a broken symlink or a symlink loop"
    if is_image_file(path):
        return ""
    if path.is_dir():
        return "a folder without DICOM files"
    if is_dicom_file(path):
        return "a single DICOM file; put the files of each series in a folder of their own (one folder = one scan)"
    return "not a supported image file"


def _data_files_of_headers(folder: Path) -> set[Path]:
    """The data files (``.raw``, ``.img``) that headers in ``folder`` name: part of those cases, not cases."""
    from medconvnext.data.detached import data_files

    found: set[Path] = set()
    for header in folder.iterdir():
        if header.name.lower().endswith((".mhd", ".nhdr", ".nrrd", ".hdr", ".hdr.gz")):
            try:
                found.update(folder / f.name for f in data_files(header) if f.parent == folder.absolute())
            except UserError:
                continue  # the validator names the header and its missing data file
    return found


def _finish(cases: list[Case], source: str, for_training: bool = True) -> Datalist:
    seen: dict[str, str] = {}
    for case in cases:
        if case.case_id in seen:
            raise UserError(f"{source}: duplicate case id {case.case_id!r} ({seen[case.case_id]} and {case.images[0]})")
        seen[case.case_id] = case.images[0]
    classes = sort_class_names({c.label for c in cases if c.label is not None})
    if not for_training:
        return Datalist(cases, classes, source)
    trainable = {c.label for c in cases if c.split not in ("val", "test")}
    for case in cases:
        if case.label is not None and case.label not in trainable:
            raise UserError(
                f"{source}: case {case.case_id!r} has label {case.label!r}, which no training case has "
                f"(training labels: {', '.join(sort_class_names({t for t in trainable if t is not None}))})"
            )
    if len(classes) < 2:
        raise UserError(f"{source}: found {len(classes)} class(es) ({', '.join(classes)}); need at least 2")
    return Datalist(cases, classes, source)
