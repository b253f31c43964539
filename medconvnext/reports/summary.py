"""Cross-validation summary: per-fold metrics, pooled out-of-fold metrics with bootstrap CIs, fold mean ± std.

The result of :func:`summarize` is plain JSON (``None`` for undefined values, never NaN); it is what
gets written as ``cv_summary.json`` (:func:`save_summary`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from medconvnext.fileio import atomic_write
from medconvnext.results.metrics import SCALAR_METRICS, bootstrap_ci, classification_metrics
from medconvnext.results.table import TEST_FOLD, Predictions

__all__ = ["CI_METRICS", "summarize", "save_summary"]

# Metrics that get a bootstrap CI on the pooled predictions (each costs n_boot recomputations): every headline one.
CI_METRICS: tuple[str, ...] = SCALAR_METRICS
CI_LEVEL = 0.95


def _with_ci(predictions: Predictions, n_boot: int, seed: int) -> dict:
    """Metrics of a set of predictions plus ``ci``: metric -> [low, high] (percentile bootstrap).

    When an image has several rows (one per repeat of a repeated cross-validation) the bootstrap resamples
    images, with all their rows, and ``n_images`` says how many distinct images there are.
    """
    metrics = classification_metrics(predictions.y_true, predictions.probs, predictions.class_names)
    clusters = predictions.images if len(set(predictions.images)) < len(predictions) else None
    if clusters is not None:
        metrics["n_images"] = len(set(predictions.images))
    ci = {}
    for name in CI_METRICS:
        if n_boot > 0:
            low, high = bootstrap_ci(predictions.y_true, predictions.probs, name, n_boot, 1 - CI_LEVEL, seed,
                                     clusters=clusters)
        else:
            low, high = None, None
        ci[name] = [low, high]
    metrics["ci"] = ci
    return metrics


def _across_folds(per_fold: list[dict]) -> dict:
    """Mean and sample standard deviation (ddof=1) of each scalar metric over the folds where it is defined."""
    out = {}
    for name in SCALAR_METRICS:
        values = [m[name] for m in per_fold if m[name] is not None]
        out[name] = {
            "mean": float(np.mean(values)) if values else None,
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            "n_folds": len(values),
        }
    return out


def summarize(predictions: Predictions, n_boot: int = 1000, seed: int = 0) -> dict:
    """Summarise predictions from a cross-validation (or a single evaluation).

    Rows with ``fold >= 0`` are out-of-fold validation predictions: each gets per-fold metrics, and
    all of them together are the pooled "out-of-fold" set. Rows with ``fold == -1`` (a held-out test
    set, e.g. predicted by the fold ensemble) are summarised separately under ``test``. When no row
    has a fold, all rows are pooled as one evaluation (``scope == "all"``).

    Args:
        n_boot: bootstrap resamples for the CIs of :data:`CI_METRICS` (0 skips them: CIs are None).
        seed: bootstrap seed; the same seed gives the same CIs.

    Returns:
        JSON-ready dict: ``class_names``, ``n_cases``, ``scope`` ("out_of_fold" or "all"), ``pooled``
        (metrics + ``ci``), ``per_fold`` (list of metrics with ``fold``), ``across_folds`` (metric ->
        mean, std, n_folds), ``test`` (metrics + ``ci``, or None), ``ci_level``, ``n_boot``, ``seed``.
    """
    oof_mask = predictions.folds != TEST_FOLD
    has_folds = bool(oof_mask.any())
    pooled_set = predictions.subset(oof_mask) if has_folds else predictions
    per_fold = []
    for fold in sorted(set(predictions.folds[oof_mask].tolist())):
        part = predictions.subset(predictions.folds == fold)
        per_fold.append({"fold": int(fold), **classification_metrics(part.y_true, part.probs, part.class_names)})
    test_mask = ~oof_mask
    test = _with_ci(predictions.subset(test_mask), n_boot, seed) if has_folds and test_mask.any() else None
    summary = {
        "class_names": list(predictions.class_names),
        "n_cases": len(predictions),
        "scope": "out_of_fold" if has_folds else "all",
        "pooled": _with_ci(pooled_set, n_boot, seed),
        "per_fold": per_fold,
        "across_folds": _across_folds(per_fold) if per_fold else None,
        "test": test,
        "ci_level": CI_LEVEL,
        "n_boot": int(n_boot),
        "seed": int(seed),
    }
    return _json_clean(summary)


def _json_clean(value):
    """Numpy scalars -> Python, NaN/inf -> None, tuples -> lists (so json.dumps(allow_nan=False) works)."""
    if isinstance(value, dict):
        return {str(k): _json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def save_summary(path: str | Path, summary: dict) -> Path:
    """Write a summary as strict JSON (``cv_summary.json``); fails loudly rather than writing NaN."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_json_clean(summary), indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path
