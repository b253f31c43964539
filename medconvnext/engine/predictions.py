"""Prediction tables (CSV/JSON): image, [label], prediction, prob_<class> for every class."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medconvnext.engine.checkpoint import atomic_write


def prediction_rows(
    images: Sequence[str], probs: np.ndarray, class_names: Sequence[str], labels: Sequence[str] | None = None
) -> list[dict]:
    """One dict per case, probabilities rounded to 6 decimals."""
    rows = []
    for i, image in enumerate(images):
        row: dict = {"image": image}
        if labels is not None:
            row["label"] = labels[i]
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
) -> list[dict]:
    """Write a ``.csv`` or ``.json`` prediction table atomically; returns the rows."""
    path = Path(path)
    rows = prediction_rows(images, probs, class_names, labels)
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
