"""Datalists: which cases exist, their labels, subjects and splits.

Accepted forms of ``--data``:
- a folder holding ``labels.csv`` (or ``labels.tsv``): columns ``image,label`` and optionally
  ``subject`` and ``split`` (train/val/test); image paths relative to the list file;
- a CSV/TSV file itself;
- a folder with one subfolder per class, each holding the images of that class.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medconvnext.errors import UserError

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")
SPLITS = ("train", "val", "test")
LIST_NAMES = ("labels.csv", "labels.tsv")


@dataclass(frozen=True)
class Case:
    """One labelled scan (or several co-registered scans stacked as channels)."""

    case_id: str
    images: tuple[str, ...]
    label: str | None
    subject: str | None = None
    split: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


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


def is_image_file(path: Path) -> bool:
    """True when the name ends in a supported image suffix."""
    return path.name.lower().endswith(IMAGE_SUFFIXES)


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


def load_datalist(data: str | Path) -> Datalist:
    """Read ``--data`` (folder or list file) into a :class:`Datalist`; UserError when it is unusable."""
    path = Path(data).expanduser()
    if not path.exists():
        raise UserError(f"--data {path}: no such file or folder")
    if path.is_file():
        return read_label_table(path)
    for name in LIST_NAMES:
        if (path / name).is_file():
            return read_label_table(path / name)
    return read_class_folders(path)


def read_label_table(path: Path) -> Datalist:
    """Read a ``labels.csv``/``.tsv`` with columns image,label[,subject][,split]."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        columns = reader.fieldnames or []
        for required in ("image", "label"):
            if required not in columns:
                raise UserError(f"{path}: missing column {required!r} (found: {', '.join(columns) or 'none'})")
        rows = list(reader)
    if not rows:
        raise UserError(f"{path}: no rows")
    cases = [_row_to_case(path, line, row) for line, row in enumerate(rows, start=2)]
    return _finish(cases, str(path))


def _row_to_case(list_path: Path, line: int, row: dict) -> Case:
    where = f"{list_path}, row {line}"
    image, label = (row.get("image") or "").strip(), (row.get("label") or "").strip()
    if not image:
        raise UserError(f"{where}: empty 'image'")
    if not label:
        raise UserError(f"{where}: empty 'label'")
    image_path = (list_path.parent / image).resolve()
    if not image_path.exists():
        raise UserError(f"{where}: image {image} not found (looked for {image_path})")
    split = (row.get("split") or "").strip().lower() or None
    if split is not None and split not in SPLITS:
        raise UserError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
    subject = (row.get("subject") or "").strip() or None
    return Case(case_id_from_path(image), (str(image_path),), label, subject, split)


def read_class_folders(root: Path) -> Datalist:
    """One subfolder per class; every image file inside is a case of that class."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise UserError(
            f"--data {root}: no labels.csv/labels.tsv and no class subfolders; "
            "give a folder with one subfolder per class or a labels.csv with columns image,label"
        )
    cases = []
    for folder in folders:
        for file in sorted(folder.iterdir()):
            if file.name.startswith("."):
                continue
            if not is_image_file(file):
                raise UserError(f"{file}: not a supported image file ({', '.join(IMAGE_SUFFIXES)})")
            cases.append(Case(case_id_from_path(file), (str(file.resolve()),), folder.name))
    if not cases:
        raise UserError(f"--data {root}: the class folders hold no images")
    return _finish(cases, str(root))


def _finish(cases: list[Case], source: str) -> Datalist:
    seen: dict[str, str] = {}
    for case in cases:
        if case.case_id in seen:
            raise UserError(f"{source}: duplicate case id {case.case_id!r} ({seen[case.case_id]} and {case.images[0]})")
        seen[case.case_id] = case.images[0]
    classes = sort_class_names({c.label for c in cases if c.label is not None})
    if len(classes) < 2:
        raise UserError(f"{source}: found {len(classes)} class(es) ({', '.join(classes)}); need at least 2")
    return Datalist(cases, classes, source)
