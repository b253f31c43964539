"""The predictions table: one row per case with its true label, fold and class probabilities.

Columns: ``image``, ``label`` (class name), ``fold`` (int, optional; -1 marks a test-set / fold-ensemble
row), ``prediction`` (class name, optional: metrics always use the argmax of the probabilities),
and ``prob_<class>`` for each class. The class names and their order come from the ``prob_`` columns.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medconvnext.errors import UserError

__all__ = ["Predictions", "PROB_PREFIX", "TEST_FOLD", "read_predictions", "predictions_from_rows", "write_predictions"]

PROB_PREFIX = "prob_"
TEST_FOLD = -1  # fold value of rows that are not out-of-fold validation predictions (test set, fold ensemble)
REQUIRED_COLUMNS = ("image", "label")


@dataclass
class Predictions:
    """Predictions of one run, as arrays ready for :mod:`medconvnext.engine.metrics`.

    Attributes:
        images: case identifiers (usually the image path), length N.
        y_true: (N,) int64 indices into ``class_names``.
        probs: (N, K) float64 probabilities.
        folds: (N,) int64 fold of each row; ``TEST_FOLD`` (-1) when not an out-of-fold prediction.
        class_names: K class names, in the order of the ``prob_`` columns.
    """

    images: list[str]
    y_true: np.ndarray
    probs: np.ndarray
    folds: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, mask: np.ndarray) -> Predictions:
        """The rows where ``mask`` is true."""
        mask = np.asarray(mask, dtype=bool)
        images = [img for img, keep in zip(self.images, mask, strict=True) if keep]
        return Predictions(images, self.y_true[mask], self.probs[mask], self.folds[mask], list(self.class_names))

    def to_rows(self) -> list[dict]:
        """Rows in the CSV layout (``prediction`` = argmax class)."""
        rows = []
        for i, image in enumerate(self.images):
            row = {"image": image, "label": self.class_names[self.y_true[i]], "fold": int(self.folds[i])}
            row["prediction"] = self.class_names[int(np.argmax(self.probs[i]))]
            row.update({PROB_PREFIX + c: float(self.probs[i, k]) for k, c in enumerate(self.class_names)})
            rows.append(row)
        return rows


def _class_names(columns: Sequence[str], source: str) -> list[str]:
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise UserError(f"{source}: missing column {missing[0]!r} (expected columns image, label, prob_<class>...)")
    names = [c[len(PROB_PREFIX) :] for c in columns if c.startswith(PROB_PREFIX)]
    if len(names) < 2:
        raise UserError(f"{source}: missing column 'prob_<class>': need one probability column per class (at least 2)")
    return names


def predictions_from_rows(rows: Iterable[Mapping], source: str = "<rows>") -> Predictions:
    """Build :class:`Predictions` from dict rows (e.g. ``csv.DictReader``); ``source`` names them in errors.

    Raises:
        UserError: a missing column, an unknown label, or a value that is not a number.
    """
    rows = list(rows)
    if not rows:
        raise UserError(f"{source}: no predictions (the table is empty)")
    columns = list(rows[0].keys())
    names = _class_names(columns, source)
    index = {name: k for k, name in enumerate(names)}
    has_fold = "fold" in columns
    images, labels, folds, probs = [], [], [], []
    for line, row in enumerate(rows, start=2):  # line 1 of a CSV is the header
        where = f"{source}: row {line}"
        label = str(row.get("label", "")).strip()
        if label not in index:
            raise UserError(f"{where}: label {label!r} is not one of the classes {names} (from the prob_ columns)")
        images.append(str(row.get("image", "")))
        labels.append(index[label])
        folds.append(_parse_fold(row.get("fold"), where) if has_fold else TEST_FOLD)
        probs.append([_parse_prob(row.get(PROB_PREFIX + c), f"{where}, column {PROB_PREFIX + c!r}") for c in names])
    return Predictions(
        images=images,
        y_true=np.asarray(labels, dtype=np.int64),
        probs=np.asarray(probs, dtype=np.float64),
        folds=np.asarray(folds, dtype=np.int64),
        class_names=names,
    )


def _parse_fold(value: object, where: str) -> int:
    # an empty cell means "no fold", like a missing column
    if value is None or str(value).strip() == "":
        return TEST_FOLD
    try:
        return int(float(str(value)))
    except ValueError:
        raise UserError(f"{where}: fold {value!r} is not an integer") from None


def _parse_prob(value: object, where: str) -> float:
    try:
        prob = float(str(value))
    except ValueError:
        raise UserError(f"{where}: probability {value!r} is not a number") from None
    if not np.isfinite(prob):
        raise UserError(f"{where}: probability {value!r} is not finite")
    return prob


def read_predictions(csv_path: str | Path) -> Predictions:
    """Read a predictions CSV (see the module docstring for its columns).

    Raises:
        UserError: the file is missing or unreadable, or a column or value is invalid; the message names the file.
    """
    path = Path(csv_path)
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            if not columns:
                raise UserError(f"{path}: empty file, expected a header with image, label, prob_<class>...")
            reader.fieldnames = columns  # tolerate spaces after commas in the header
            _class_names(columns, str(path))  # name a missing column even when there are no rows
            rows = list(reader)
    except OSError as exc:
        raise UserError(f"{path}: cannot read predictions ({exc.strerror or exc})") from None
    return predictions_from_rows(rows, source=str(path))


def write_predictions(path: str | Path, predictions: Predictions) -> Path:
    """Write predictions as CSV in the layout :func:`read_predictions` reads (e.g. ``oof_predictions.csv``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = predictions.to_rows()
    fields = ["image", "label", "fold", "prediction"] + [PROB_PREFIX + c for c in predictions.class_names]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path
