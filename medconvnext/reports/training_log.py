"""Read a fold's ``metrics.jsonl``: one JSON object per epoch (epoch, train_loss, val_loss, val_auc, ...)."""

from __future__ import annotations

import json
from pathlib import Path

from medconvnext.errors import UserError

__all__ = ["read_training_log", "CURVE_KEYS"]

CURVE_KEYS = ("train_loss", "val_loss", "val_auc", "val_accuracy")


def read_training_log(path: str | Path) -> list[dict]:
    """Epoch records of one training log, in file order; keys may be missing or null.

    A malformed *last* line is ignored: it is what a run killed mid-write leaves behind, and the
    report should still show the epochs before it.

    Raises:
        UserError: the file cannot be read, or a line before the last is not a JSON object.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UserError(f"{path}: cannot read training log ({exc.strerror or exc})") from None
    lines = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    records = []
    for position, (number, line) in enumerate(lines):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError:
            if position == len(lines) - 1:
                break
            raise UserError(f"{path}: line {number} is not a JSON object (one record per epoch expected)") from None
        records.append(record)
    return records
