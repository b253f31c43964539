"""Train/validation splits that respect the ``split`` column and stratify by class."""

from __future__ import annotations

from dataclasses import dataclass

from medconvnext.data.datalist import Datalist
from medconvnext.errors import UserError


@dataclass
class Split:
    """Case ids on each side."""

    train: list[str]
    val: list[str]
    test: list[str]

    def to_dict(self) -> dict:
        return {"train": self.train, "val": self.val, "test": self.test}


def train_val_split(datalist: Datalist, val_fraction: float, seed: int) -> Split:
    """Use the ``split`` column when it names a validation set; else a stratified random split.

    Cases marked ``test`` are never used for training or model selection.
    """
    test = [c.case_id for c in datalist.cases if c.split == "test"]
    val = [c.case_id for c in datalist.cases if c.split == "val"]
    pool = [c for c in datalist.cases if c.split not in ("val", "test")]
    if val:
        return Split([c.case_id for c in pool], val, test)
    if not 0 < val_fraction < 1:
        raise UserError(f"data.val_fraction must be between 0 and 1, got {val_fraction}")
    from sklearn.model_selection import train_test_split

    labels = [c.label for c in pool]
    counts = {label: labels.count(label) for label in set(labels)}
    if min(counts.values()) < 2:
        rare = min(counts, key=counts.get)
        raise UserError(f"{datalist.source}: class {rare!r} has {counts[rare]} case(s); need at least 2 to split")
    n_val = max(len(counts), round(val_fraction * len(pool)))
    train_cases, val_cases = train_test_split(pool, test_size=n_val, stratify=labels, random_state=seed)
    return Split(sorted(c.case_id for c in train_cases), sorted(c.case_id for c in val_cases), test)
