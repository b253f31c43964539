"""Leakage audit: evaluation cases that are not independent of the training cases.

Two checks between a training side and an evaluation side:

- **shared subject**: a value of the grouping column (``subject`` by default) on both sides, e.g. two scans
  of one patient, one trained on and one validated on;
- **identical image**: the same voxel content on both sides (a copy of a training scan under another name,
  a ``.nii`` and its ``.nii.gz``, a re-export with an edited header).

Images are compared by a SHA-256 of their *decoded voxel array* (dtype, shape and bytes in x-fastest order, the
order NIfTI stores and SimpleITK reads, so hashing copies nothing; the header, the affine, the file name and the
compression are left out), not of the file bytes: gzip stores a timestamp and
the original name, and header edits (anonymisation, a new description) change the bytes, so byte hashes miss
exactly the copies that happen in practice. Decoding costs one read of each volume, so voxel hashes are
cached in ``<cache dir>/image_hashes.json`` keyed by the digest of the file's bytes
(:mod:`medconvnext.data.content`, the disk cache's key, memoised per size, mtime, ctime and inode): a later
``train``/``cv``/``evaluate`` on the same files decodes nothing, and a file rewritten with other voxels is decoded
again even when its size and modification time were restored (``cp -p``, ``rsync -a``).
Near-duplicates (a resampled or cropped copy) are not detected.

The callers decide what a finding does (:func:`enforce`): ``warn`` (a one-line warning naming the
cases), ``error`` (a :class:`~medconvnext.errors.UserError`, exit code 2: ``--strict``) or ``off``.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medconvnext.choices import Leakage, choices
from medconvnext.data.datalist import Case, case_id_from_path
from medconvnext.data.io import read_voxels
from medconvnext.errors import UserError
from medconvnext.fileio import write_json_cache

__all__ = [
    "Finding",
    "LeakageReport",
    "LeakageWarning",
    "audit_cases",
    "audit_folds",
    "audit_run",
    "audit_split",
    "enforce",
    "image_hash",
    "remember_hashes",
    "voxel_hash",
]

HASH_CACHE_NAME = "image_hashes.json"
HASH_FORMAT = 3  # 3: bytes in x-fastest order (2: C order, a seconds-long transposing copy of a CT; 1: keyed by path)
SHOWN = 5  # findings named per kind in the one-line message

_memo: dict[str, str] = {}  # file content digest -> voxel hash, for this process


class LeakageWarning(UserWarning):
    """Evaluation cases that share a subject or an image with training cases."""


@dataclass(frozen=True)
class Finding:
    """One evaluation case that is not independent of one training case."""

    kind: str  # "subject" | "image"
    train_case: str
    eval_case: str
    eval_side: str  # e.g. "val", "test", "fold 2", "evaluated"
    detail: str  # the shared subject, or the shared image's hash prefix
    train_side: str = "train"  # the role of train_case in the run: "train", "val" (model selection), "cv"
    run: str = ""  # the run's name, when several runs are audited together (an ensemble)


def _item(f: Finding) -> str:
    """One finding in a message: ``s3 (train c06 / val c07)``, ``val c07 = train c02``, or, when the evaluated case
    is itself one the run trained or selected on, ``c07 (the run's own val case)``; with ``run`` set, the run is
    named: ``val c07 = run_b train c02``, ``c07 (run_b's own val case)``."""
    side = f"{f.run} {f.train_side}" if f.run else f.train_side
    if f.kind == "subject":
        return f"{f.detail} ({side} {f.train_case} / {f.eval_side} {f.eval_case})"
    if f.train_case == f.eval_case:
        owner = f"{f.run}'s" if f.run else "the run's"
        return f"{f.eval_case} ({owner} own {f.train_side} case)"
    return f"{f.eval_side} {f.eval_case} = {side} {f.train_case}"


@dataclass
class LeakageReport:
    """Findings of an audit (empty: nothing found)."""

    findings: list[Finding] = field(default_factory=list)
    hashed: int = 0  # images hashed (cache hits included)
    unreadable: list[str] = field(default_factory=list)  # images that could not be hashed (not compared)

    def __bool__(self) -> bool:
        return bool(self.findings)

    def cases(self, kind: str | None = None) -> set[str]:
        """Evaluation case ids with a finding (of ``kind``)."""
        return {f.eval_case for f in self.findings if kind is None or f.kind == kind}

    def message(self) -> str:
        """One line naming the cases, e.g. ``possible leakage: shared subject s3 (train c06 / val c07); ...``."""
        parts = []
        for kind, title in (("subject", "shared subject"), ("image", "identical image")):
            found = [f for f in self.findings if f.kind == kind]
            if not found:
                continue
            items = [_item(f) for f in found[:SHOWN]]
            more = f" and {len(found) - SHOWN} more" if len(found) > SHOWN else ""
            parts.append(f"{len(found)} {title}{'s' if len(found) > 1 else ''}: {', '.join(items)}{more}")
        return "possible leakage between training and evaluation cases: " + "; ".join(parts)

    def merge(self, other: LeakageReport) -> LeakageReport:
        seen = set(self.findings)
        findings = self.findings + [f for f in other.findings if f not in seen]
        unreadable = sorted(set(self.unreadable) | set(other.unreadable))
        return LeakageReport(findings, max(self.hashed, other.hashed), unreadable)


def enforce(report: LeakageReport, mode: str, hint: str = "--strict") -> None:
    """``warn``: a :class:`LeakageWarning`; ``error``: UserError (exit 2); ``off``: nothing."""
    if mode not in choices(Leakage):
        raise UserError(f"data.leakage must be one of {', '.join(choices(Leakage))}, got {mode!r}")
    if not report or mode == "off":
        return
    if mode == "error":
        raise UserError(f"{report.message()} (refused because of {hint}; fix the split or drop {hint})")
    warnings.warn(report.message(), LeakageWarning, stacklevel=2)


# --------------------------------------------------------------------------------------------- hashing


def voxel_hash(array: np.ndarray) -> str:
    """SHA-256 of a decoded voxel array (x, y, z[, c]): its dtype, shape and bytes in x-fastest order (a NIfTI
    array and SimpleITK's transposed one already are, so nothing is copied)."""
    array = np.asfortranarray(array)
    digest = hashlib.sha256(f"F|{array.dtype.str}|{array.shape}|".encode())
    digest.update(array.T.reshape(-1).view(np.uint8))
    return digest.hexdigest()


def _hash_voxels(path: Path) -> str:
    return voxel_hash(read_voxels(path))


def remember_hashes(found: dict[str, tuple[str, str]]) -> None:
    """Keep voxel hashes computed from arrays decoded elsewhere (the data checks read every voxel anyway):
    ``{content digest: (resolved path, voxel hash)}``, in this process and in the hash cache, so that the audit
    of the same files decodes nothing."""
    if not found:
        return
    path = _cache_file(None)
    cache = _load_cache(path)
    for content, (key, digest) in found.items():
        _memo[content] = digest
        cache[content] = {"sha256": digest, "path": key}
    _save_cache(path, cache)


def _cache_file(cache_dir: str | Path | None) -> Path:
    if cache_dir is None:
        cache_dir = os.environ.get("MEDCONVNEXT_CACHE_DIR") or Path.home() / ".cache" / "medconvnext"
    return Path(cache_dir).expanduser() / HASH_CACHE_NAME


def _load_cache(path: Path) -> dict:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(values, dict) or values.get("format") != HASH_FORMAT:
        return {}
    return values.get("images", {}) if isinstance(values.get("images"), dict) else {}


def _save_cache(path: Path, images: dict) -> None:
    """Atomically; entries whose last file no longer exists are dropped. A read-only cache folder is ignored."""
    images = {k: v for k, v in images.items() if isinstance(v, dict) and Path(str(v.get("path"))).exists()}
    write_json_cache(path, {"format": HASH_FORMAT, "images": images})


def image_hashes(paths: Iterable[str | Path], cache_dir: str | Path | None = None) -> dict[str, str | None]:
    """Resolved path -> voxel hash (None when the image cannot be read) for each path."""
    from medconvnext.data.content import file_digests

    cache_path = _cache_file(cache_dir)
    paths = [Path(raw).resolve() for raw in paths]
    contents = file_digests(paths, cache_path.parent, skip_unreadable=True)  # one call: one read of the memo
    cache: dict | None = None
    out: dict[str, str | None] = {}
    changed = False
    for path in paths:
        key = str(path)
        if key in out:
            continue
        content = contents.get(key)
        if content is None:
            out[key] = None
            continue
        if content in _memo:
            out[key] = _memo[content]
            continue
        if cache is None:
            cache = _load_cache(cache_path)
        entry = cache.get(content)
        if isinstance(entry, dict) and isinstance(entry.get("sha256"), str):
            digest = entry["sha256"]
        else:
            try:
                digest = _hash_voxels(path)
            except Exception:  # noqa: BLE001 - an unreadable image is reported by the data checks, not here
                out[key] = None
                continue
            cache[content] = {"sha256": digest, "path": key}  # the path only lets _save_cache drop old entries
            changed = True
        _memo[content] = digest
        out[key] = digest
    if changed and cache is not None:
        _save_cache(cache_path, cache)
    return out


def image_hash(path: str | Path, cache_dir: str | Path | None = None) -> str | None:
    """SHA-256 of an image's voxel data (dtype, shape, values), cached per digest of the file's bytes."""
    return image_hashes([path], cache_dir)[str(Path(path).resolve())]


# --------------------------------------------------------------------------------------------- audits


def audit_cases(
    train: Sequence[Case],
    evaluated: Sequence[Case],
    eval_side: str | Sequence[str] = "evaluated",
    group_by: str | None = "subject",
    check_images: bool = True,
    cache_dir: str | Path | None = None,
    train_side: str | Sequence[str] = "train",
) -> LeakageReport:
    """Findings between ``train`` and ``evaluated`` cases.

    Args:
        eval_side: how to name the evaluation side in the message, one name or one per evaluated case.
        train_side: how to name the role of each ``train`` case (one name or one per case), e.g. "val" for the
            validation cases that chose a run's best epoch.
        group_by: the subject column (``subject`` or an extra column of the datalist); None skips that check.
        check_images: compare voxel hashes of every image of every case.
    """
    sides = [eval_side] * len(evaluated) if isinstance(eval_side, str) else list(eval_side)
    roles = dict(zip((c.case_id for c in train),
                     [train_side] * len(train) if isinstance(train_side, str) else list(train_side), strict=True))
    findings: list[Finding] = []
    if group_by is not None:
        by_group: dict[str, str] = {}
        for case in train:
            group = case.group(group_by)
            if group is not None:
                by_group.setdefault(group, case.case_id)
        for case, side in zip(evaluated, sides, strict=True):
            group = case.group(group_by)
            if group is not None and group in by_group:
                label = group if group_by == "subject" else f"{group_by} {group}"
                train_case = by_group[group]
                findings.append(Finding("subject", train_case, case.case_id, side, label, roles[train_case]))
    report = LeakageReport(findings)
    if check_images:
        paths = [p for case in [*train, *evaluated] for p in case.images]
        hashes = image_hashes(paths, cache_dir)
        report.hashed = sum(h is not None for h in hashes.values())
        report.unreadable = sorted(p for p, h in hashes.items() if h is None)
        by_hash: dict[str, str] = {}
        for case in train:
            for image in case.images:
                digest = hashes[str(Path(image).resolve())]
                if digest is not None:
                    by_hash.setdefault(digest, case.case_id)
        for case, side in zip(evaluated, sides, strict=True):
            for image in case.images:
                digest = hashes[str(Path(image).resolve())]
                if digest is not None and digest in by_hash:
                    report.findings.append(Finding("image", by_hash[digest], case.case_id, side, digest[:12],
                                                   roles[by_hash[digest]]))
                    break
    return report


def audit_split(datalist, split, group_by: str | None = "subject", check_images: bool = True) -> LeakageReport:
    """Training cases of a :class:`~medconvnext.data.splits.Split` against its validation and test cases."""
    by_id = {c.case_id: c for c in datalist.cases}
    train = [by_id[i] for i in split.train]
    evaluated = [by_id[i] for i in split.val] + [by_id[i] for i in split.test]
    sides = ["val"] * len(split.val) + ["test"] * len(split.test)
    return audit_cases(train, evaluated, sides, group_by, check_images)


def audit_folds(datalist, folds, group_by: str | None = "subject", check_images: bool = True) -> LeakageReport:
    """Every fold's training cases against its held-out fold, and all non-test cases against the test cases."""
    by_id = {c.case_id: c for c in datalist.cases}
    if check_images:  # hash every image once, up front
        image_hashes(p for c in datalist.cases for p in c.images)
    report = LeakageReport()
    for fold in folds:
        name = f"fold {fold.index}" if fold.repeat == 0 else f"repeat {fold.repeat} fold {fold.index}"
        train = [by_id[i] for i in fold.split.train]
        report = report.merge(audit_cases(train, [by_id[i] for i in fold.split.val], name, group_by, check_images))
    if folds and folds[0].split.test:
        pool = [by_id[i] for i in {*folds[0].split.train, *folds[0].split.val}]
        test = [by_id[i] for i in folds[0].split.test]
        report = report.merge(audit_cases(pool, test, "test", group_by, check_images))
    return report


def _case_from_dict(values: dict) -> Case:
    return Case(
        str(values["case_id"]), tuple(values.get("images") or ()), values.get("label"), values.get("subject"),
        values.get("split"), dict(values.get("extra") or {}),
    )


def training_cases(run_dir: str | Path) -> tuple[list[Case], str | None]:
    """The cases a run (or every fold of a cross-validation) trained on or selected its model with, and the
    grouping column it used."""
    from medconvnext.rundir import RunDir

    run = RunDir(Path(run_dir))
    if not run.splits.is_file():
        raise UserError(f"{run.root}: no {run.splits.name}; the leakage audit needs a run directory (not a checkpoint "
                        "file)")
    if run.is_cv():
        params = json.loads(run.cv_params.read_text(encoding="utf-8"))
        first = run.folds()[0][2]
        dataset_path, splits = first.dataset, json.loads(run.splits.read_text(encoding="utf-8"))
        ids = {i for fold in splits["folds"] for i in (*fold["train"], *fold["val"])}
        group_by = params.get("group_by") or "subject"
    else:
        dataset_path, splits = run.dataset, json.loads(run.splits.read_text(encoding="utf-8"))
        ids = {*splits["train"], *splits["val"]}
        group_by = "subject"
    if not dataset_path.is_file():
        raise UserError(f"{run.root}: {dataset_path.name} missing; not a finished run directory")
    cases = [_case_from_dict(c) for c in json.loads(dataset_path.read_text(encoding="utf-8"))["cases"]]
    return [c for c in cases if c.case_id in ids], group_by


def training_roles(run_dir: str | Path) -> dict[str, str]:
    """Case id -> its role in the run: ``train`` or ``val`` (chose the best epoch) for a train run; ``cv`` (trained
    on by some folds, validated by one) for a cross-validation."""
    from medconvnext.rundir import RunDir

    run = RunDir(Path(run_dir))
    splits = json.loads(run.splits.read_text(encoding="utf-8"))
    if run.is_cv():
        return {i: "cv" for fold in splits["folds"] for i in (*fold["train"], *fold["val"])}
    return {**{i: "train" for i in splits["train"]}, **{i: "val" for i in splits["val"]}}


def audit_run(
    run_dir: str | Path,
    evaluated: Sequence[Case | str | Path],
    eval_side: str = "evaluated",
    check_images: bool = True,
) -> LeakageReport:
    """Cases (or image paths, e.g. the scans given to ``predict``) against the cases that the run in
    ``run_dir`` trained on or selected its model with (for a cross-validation: all its non-test cases)."""
    train, group_by = training_cases(run_dir)
    roles = training_roles(run_dir)
    cases = [
        c if isinstance(c, Case) else Case(case_id_from_path(c), (str(Path(c).resolve()),), None) for c in evaluated
    ]
    return audit_cases(train, cases, eval_side, group_by, check_images,
                       train_side=[roles.get(c.case_id, "train") for c in train])
