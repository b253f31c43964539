"""Train/validation splits that respect the ``split`` column, stratify by class and keep subjects together.

- :func:`train_val_split`: one hold-out validation set (``train``);
- :func:`cv_splits`: stratified K-fold, optionally repeated (``cv``).

When cases carry a grouping value (the ``subject`` column, or another column named by ``group_by``) the
splits are *grouped*: all cases of one subject land on the same side (scikit-learn's
``StratifiedGroupKFold``), so no subject is both trained on and validated on. A case with an empty
grouping value is its own group. Cases marked ``test`` (or without a label) are never used for training
or model selection.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from medconvnext.data.datalist import Case, Datalist
from medconvnext.errors import UserError


@dataclass
class Split:
    """Case ids on each side."""

    train: list[str]
    val: list[str]
    test: list[str]

    def to_dict(self) -> dict:
        return {"train": self.train, "val": self.val, "test": self.test}


@dataclass
class Fold:
    """One fold of a (repeated) cross-validation: ``split.val`` is the held-out fold."""

    repeat: int
    index: int
    split: Split
    groups: dict[str, str] = field(default_factory=dict)  # case id -> group, for the cases of a grouped split

    def to_dict(self) -> dict:
        return {"repeat": self.repeat, "fold": self.index, "train": self.split.train, "val": self.split.val}


def resolve_group_column(datalist: Datalist, group_by: str | None) -> str | None:
    """The grouping column: ``group_by`` when given (it must exist), else ``subject`` when cases have one."""
    columns = datalist.columns()
    if group_by is None:
        return "subject" if "subject" in columns else None
    if group_by not in columns:
        known = ", ".join(sorted(columns)) or "none"
        raise UserError(f"--group-by {group_by}: {datalist.source} has no such column with values (columns: {known})")
    return group_by


def case_groups(cases: list[Case], column: str | None) -> list[str]:
    """The group of each case (its own id when it has no value in ``column``)."""
    return [c.group(column) or f"case:{c.case_id}" for c in cases]


def _pool_and_test(datalist: Datalist, include_val: bool) -> tuple[list[Case], list[str]]:
    test = [c.case_id for c in datalist.cases if c.split == "test" or c.label is None]
    excluded = ("test",) if include_val else ("val", "test")
    pool = [c for c in datalist.cases if c.split not in excluded and c.label is not None]
    return pool, test


def _check_class_counts(datalist: Datalist, labels: list[str], needed: int, what: str) -> None:
    counts = {label: labels.count(label) for label in set(labels)}
    rare = min(counts, key=lambda k: (counts[k], k))
    if counts[rare] < needed:
        raise UserError(f"{datalist.source}: class {rare!r} has {counts[rare]} case(s); need at least {needed} {what}")


def train_val_split(datalist: Datalist, val_fraction: float, seed: int) -> Split:
    """Use the ``split`` column when it names a validation set; else a stratified random split
    (grouped by ``subject`` when the cases have one).

    Cases marked ``test`` are never used for training or model selection.
    """
    pool, test = _pool_and_test(datalist, include_val=False)
    val = [c.case_id for c in datalist.cases if c.split == "val"]
    if val:
        return Split([c.case_id for c in pool], val, test)
    if not 0 < val_fraction < 1:
        raise UserError(f"data.val_fraction must be between 0 and 1, got {val_fraction}")
    labels = [c.label for c in pool]
    _check_class_counts(datalist, labels, 2, "to split")
    column = resolve_group_column(datalist, None)
    if column is not None:
        groups = case_groups(pool, column)
        n_splits = min(max(2, round(1 / val_fraction)), len(set(groups)))
        if n_splits < 2:
            raise UserError(f"{datalist.source}: all cases belong to one {column}; cannot hold out a validation set")
        from sklearn.model_selection import StratifiedGroupKFold

        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "least populated class has fewer members than n_splits"
            train_idx, val_idx = next(splitter.split(labels, labels, groups))
        return Split(sorted(pool[i].case_id for i in train_idx), sorted(pool[i].case_id for i in val_idx), test)
    from sklearn.model_selection import train_test_split

    n_val = max(len(set(labels)), round(val_fraction * len(pool)))
    train_cases, val_cases = train_test_split(pool, test_size=n_val, stratify=labels, random_state=seed)
    return Split(sorted(c.case_id for c in train_cases), sorted(c.case_id for c in val_cases), test)


def cv_splits(
    datalist: Datalist, folds: int, seed: int = 0, repeats: int = 1, group_by: str | None = None
) -> list[Fold]:
    """Stratified K-fold over the non-test cases (``val`` rows included), ``repeats`` times with different
    shuffles (seed ``seed + repeat``); grouped (``StratifiedGroupKFold``) when a grouping column applies
    (see :func:`resolve_group_column`). Each fold's ``split.test`` holds the test cases.
    """
    if folds < 2:
        raise UserError(f"--folds must be at least 2, got {folds}")
    if repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {repeats}")
    pool, test = _pool_and_test(datalist, include_val=True)
    column = resolve_group_column(datalist, group_by)
    labels = [c.label for c in pool]
    groups = case_groups(pool, column)
    units = len(set(groups)) if column is not None else len(pool)
    if units < folds:
        what = f"{column}s" if column is not None else "non-test cases"
        raise UserError(f"{datalist.source}: {units} {what} for {folds} folds; use --folds {max(2, units)} or fewer")
    _check_class_counts(datalist, labels, 2, "for cross-validation")
    counts = {label: labels.count(label) for label in set(labels)}
    rare = [f"{k!r} ({v})" for k, v in sorted(counts.items()) if v < folds]
    if rare:
        warnings.warn(f"class {', '.join(rare)} has fewer cases than --folds {folds}: some validation folds will "
                      "lack it (their AUC is then undefined)", stacklevel=2)
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    out = []
    for repeat in range(repeats):
        random_state = seed + repeat
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # sklearn's version of the warning above
            if column is not None:
                parts = StratifiedGroupKFold(folds, shuffle=True, random_state=random_state).split(labels, labels,
                                                                                                    groups)
            else:
                parts = StratifiedKFold(folds, shuffle=True, random_state=random_state).split(labels, labels)
            parts = list(parts)
        for index, (train_idx, val_idx) in enumerate(parts):
            split = Split(sorted(pool[i].case_id for i in train_idx), sorted(pool[i].case_id for i in val_idx), test)
            fold_groups = {pool[i].case_id: groups[i] for i in range(len(pool))} if column is not None else {}
            out.append(Fold(repeat, index, split, fold_groups))
    return out
