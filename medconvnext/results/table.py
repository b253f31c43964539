"""The prediction table: one row per case with its image, label, fold and class probabilities.

Every table the toolkit writes or reads has this layout (``predict --output``, ``val_predictions.csv``,
``oof_predictions.csv``, ``test_predictions.csv``, an evaluation's ``predictions.csv``). Columns, in order:
``image``; ``label`` (class name; absent from ``predict`` output without labels, empty for an unlabelled case);
``repeat`` (cross-validation with repeats only); ``fold`` (int, optional; -1 marks a test-set / fold-ensemble
row); ``prediction`` (class name; metrics always use the argmax of the probabilities); ``prob_<class>`` for
each class. The class names and their order come from the ``prob_`` columns. ``predict --output`` adds how each
``prediction`` was made (:func:`with_decision`): ``threshold`` (on ``prob_<second class>``; empty = the most
probable class) and ``temperature`` (the temperature scaling applied to the probabilities; empty = none); readers
ignore both.

Written tables round probabilities to 6 decimals (:func:`prediction_rows`); :class:`Predictions` is a
labelled table read back as arrays for :mod:`medconvnext.results.metrics`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medconvnext.errors import UserError
from medconvnext.fileio import atomic_write

__all__ = [
    "PROB_PREFIX",
    "TEST_FOLD",
    "Predictions",
    "prediction_rows",
    "predictions_from_rows",
    "read_predictions",
    "require_finite",
    "with_decision",
    "write_prediction_table",
    "write_predictions",
    "write_table",
]

PROB_PREFIX = "prob_"
TEST_FOLD = -1  # fold value of rows that are not out-of-fold validation predictions (test set, fold ensemble)
REQUIRED_COLUMNS = ("image", "label")


@dataclass
class Predictions:
    """Predictions of one run, as arrays ready for :mod:`medconvnext.results.metrics`.

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
    except UnicodeDecodeError as exc:  # a table re-saved by a spreadsheet in latin-1 / cp1252
        raise UserError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at position {exc.start}); "
                        "save the table as UTF-8") from None
    except csv.Error as exc:
        raise UserError(f"{path}: not a readable CSV table ({exc})") from None
    return predictions_from_rows(rows, source=str(path))


def write_predictions(path: str | Path, predictions: Predictions) -> Path:
    """Write predictions as CSV in the layout :func:`read_predictions` reads (probabilities not rounded)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = ["image", "label", "fold", "prediction"] + [PROB_PREFIX + c for c in predictions.class_names]
    write_table(path, predictions.to_rows(), fields)
    return path


def require_finite(images: Sequence[str], probs: np.ndarray) -> None:
    """UserError naming the first scan whose probabilities (N, K) hold NaN/Inf: never written as a prediction.

    The inputs passed the validation gate (finite voxels), so this is the model's doing (e.g. a checkpoint whose
    training diverged)."""
    bad = [image for image, p in zip(images, probs, strict=True) if not np.isfinite(p).all()]
    if bad:
        more = f" (and {len(bad) - 1} more scan(s))" if len(bad) > 1 else ""
        raise UserError(f"{bad[0]}: the model gave NaN/Inf probabilities{more}; its weights are probably not finite "
                        "(a training run that diverged); nothing was written")


def prediction_rows(
    images: Sequence[str],
    probs: np.ndarray,
    class_names: Sequence[str],
    labels: Sequence[str] | None = None,
    threshold: float | None = None,
    folds: Sequence[int] | None = None,
    repeats: Sequence[int] | None = None,
) -> list[dict]:
    """One dict per case in the module's column order, probabilities (N, K) rounded to 6 decimals.

    ``prediction`` is the most probable class, or (two classes, ``threshold`` given) the second (positive) class
    when its probability is >= ``threshold``. ``labels``, ``repeats`` and ``folds`` (length N each) add their
    columns when given.
    """
    rows = []
    for i, image in enumerate(images):
        row: dict = {"image": image}
        if labels is not None:
            row["label"] = labels[i]
        if repeats is not None:
            row["repeat"] = repeats[i]
        if folds is not None:
            row["fold"] = folds[i]
        if threshold is not None and len(class_names) == 2:
            row["prediction"] = class_names[1 if probs[i][1] >= threshold else 0]
        else:
            row["prediction"] = class_names[int(np.argmax(probs[i]))]
        for k, name in enumerate(class_names):
            row[f"{PROB_PREFIX}{name}"] = round(float(probs[i][k]), 6)
        rows.append(row)
    return rows


def with_decision(rows: list[dict], threshold: float | None, temperature: float | None) -> list[dict]:
    """The rows with ``threshold`` and ``temperature`` columns: a written table says how its predictions were
    made (the threshold on P(second class), the calibration temperature; ``""`` = argmax / uncalibrated)."""
    for row in rows:
        row["threshold"] = "" if threshold is None else round(float(threshold), 6)
        row["temperature"] = "" if temperature is None else round(float(temperature), 6)
    return rows


def write_table(path: str | Path, rows: Sequence[Mapping], fields: Sequence[str] | None = None) -> None:
    """Write rows atomically: JSON (a list of objects) for a ``.json`` path, else CSV with the columns ``fields``
    (default: the first row's keys).

    Raises:
        ValueError: a CSV without rows and without ``fields`` (its columns are unknown).
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(list(rows), indent=2), encoding="utf-8"))
        return
    if fields is None and not rows:
        raise ValueError(f"{path}: no rows and no columns to write")
    columns = list(fields) if fields is not None else list(rows[0])
    atomic_write(path, lambda tmp: _write_csv(tmp, rows, columns))


def write_prediction_table(
    path: str | Path,
    images: Sequence[str],
    probs: np.ndarray,
    class_names: Sequence[str],
    labels: Sequence[str] | None = None,
    threshold: float | None = None,
) -> list[dict]:
    """Write a ``.csv`` or ``.json`` prediction table atomically; returns the rows (see :func:`prediction_rows`)."""
    rows = prediction_rows(images, probs, class_names, labels, threshold)
    write_table(path, rows)
    return rows


def _write_csv(path: Path, rows: Sequence[Mapping], fields: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
