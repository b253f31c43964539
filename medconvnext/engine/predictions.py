"""Prediction tables (CSV/JSON): image, [label], prediction, prob_<class> for every class."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medconvnext.engine.checkpoint import atomic_write


def require_finite(images: Sequence[str], probs: np.ndarray) -> None:
    """UserError naming the first scan whose probabilities (N, K) hold NaN/Inf: never written as a prediction.

    The inputs passed the validation gate (finite voxels), so this is the model's doing (e.g. a checkpoint whose
    training diverged)."""
    from medconvnext.errors import UserError

    bad = [image for image, p in zip(images, probs, strict=True) if not np.isfinite(p).all()]
    if bad:
        more = f" (and {len(bad) - 1} more scan(s))" if len(bad) > 1 else ""
        raise UserError(f"{bad[0]}: the model gave NaN/Inf probabilities{more}; its weights are probably not finite "
                        "(a training run that diverged); nothing was written")


def prediction_rows(
    images: Sequence[str], probs: np.ndarray, class_names: Sequence[str], labels: Sequence[str] | None = None,
    threshold: float | None = None,
) -> list[dict]:
    """One dict per case, probabilities rounded to 6 decimals.

    ``prediction`` is the most probable class, or (two classes, ``threshold`` given) the second (positive) class
    when its probability is >= ``threshold``.
    """
    rows = []
    for i, image in enumerate(images):
        row: dict = {"image": image}
        if labels is not None:
            row["label"] = labels[i]
        if threshold is not None and len(class_names) == 2:
            row["prediction"] = class_names[1 if probs[i, 1] >= threshold else 0]
        else:
            row["prediction"] = class_names[int(np.argmax(probs[i]))]
        for k, name in enumerate(class_names):
            row[f"prob_{name}"] = round(float(probs[i, k]), 6)
        rows.append(row)
    return rows


def write_prediction_table(
    path: str | Path,
    images: Sequence[str],
    probs: np.ndarray,
    class_names: Sequence[str],
    labels: Sequence[str] | None = None,
    threshold: float | None = None,
) -> list[dict]:
    """Write a ``.csv`` or ``.json`` prediction table atomically; returns the rows (see :func:`prediction_rows`)."""
    path = Path(path)
    rows = prediction_rows(images, probs, class_names, labels, threshold)
    if path.suffix.lower() == ".json":
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(rows, indent=2), encoding="utf-8"))
    else:
        atomic_write(path, lambda tmp: _write_csv(tmp, rows))
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
