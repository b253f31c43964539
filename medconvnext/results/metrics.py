"""Classification metrics from true labels and predicted probabilities.

Binary (K=2) and multiclass (K>2) go through the same code: every count-based metric comes from one
confusion matrix over the K known classes, and every AUC from one-vs-rest rank statistics, so a
binary problem is just the K=2 case with a few "positive class" conventions:

==================  =================================  ===============================================
metric              binary (positive class = index 1)  multiclass
==================  =================================  ===============================================
auc                 ROC AUC of ``probs[:, 1]``          macro mean of one-vs-rest AUCs
sensitivity         recall of class 1                   macro mean of per-class recall
specificity         recall of class 0                   macro mean of per-class one-vs-rest specificity
f1                  F1 of class 1                       macro F1 (``f1_macro``/``f1_weighted`` always given)
brier               mean (p1 - y)^2                     mean over cases of sum_k (p_k - onehot_k)^2
==================  =================================  ===============================================

Both Brier forms are what :func:`sklearn.metrics.brier_score_loss` returns (>= 1.7); note the
multiclass form of a binary problem would be exactly twice the binary one.

Predictions are ``argmax(probs)``. Values that are undefined for the data (an AUC when only one
class is present, the recall of a class with no cases) are ``None``, never NaN, so results go
straight into JSON. Macro averages are taken over the classes where the value is defined, which is
what scikit-learn does for labels absent from both ``y_true`` and the predictions.

This module is pure numpy (no torch, no sklearn at import time) because the trainer calls
:func:`classification_metrics` every epoch; it never bootstraps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "SCALAR_METRICS",
    "ci_text",
    "classification_metrics",
    "bootstrap_ci",
    "binary_auc",
    "expected_calibration_error",
    "reliability_bins",
]

# Scalar keys of classification_metrics(), in display order (tables and the trainer's logs use this).
SCALAR_METRICS: tuple[str, ...] = (
    "auc",
    "accuracy",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "f1",
    "f1_macro",
    "f1_weighted",
    "mcc",
    "brier",
    "ece",
)

ECE_BINS = 15


def _check_inputs(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str] | None = None):
    """Return (y_true as int64 (N,), probs as float64 (N, K)) or raise ValueError on a shape/label mismatch."""
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probs must have shape (N, K) with K >= 2, got {p.shape}")
    if y.ndim != 1 or y.shape[0] != p.shape[0]:
        raise ValueError(f"y_true must have shape ({p.shape[0]},), got {y.shape}")
    if y.shape[0] == 0:
        raise ValueError("no cases: y_true is empty")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError("y_true must hold integer class indices")
        y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"y_true holds class indices outside [0, {p.shape[1] - 1}]")
    if class_names is not None and len(class_names) != p.shape[1]:
        raise ValueError(f"{len(class_names)} class names for {p.shape[1]} probability columns")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs contain NaN or infinite values")
    return y.astype(np.int64), p


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den > 0 else None


def _mean_defined(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def _confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) counts, rows = true class, columns = predicted class (sklearn's convention)."""
    flat = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def binary_auc(is_positive: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC as the Mann-Whitney statistic with average ranks for ties (equal to sklearn's roc_auc_score).

    Returns None when only one class is present. Ranks instead of sklearn's curve integration keep the
    bootstrap (thousands of AUCs) fast.
    """
    pos = np.asarray(is_positive, dtype=bool)
    n_pos = int(pos.sum())
    n_neg = pos.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    # average rank (1-based) of each group of tied scores
    ends = np.cumsum(counts)
    avg_rank = ends - (counts - 1) / 2.0
    rank_sum = avg_rank[inverse.reshape(-1)][pos].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _per_class_auc(y: np.ndarray, p: np.ndarray) -> list[float | None]:
    return [binary_auc(y == k, p[:, k]) for k in range(p.shape[1])]


def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    if p.shape[1] == 2:
        return binary_auc(y == 1, p[:, 1])
    return _mean_defined(_per_class_auc(y, p))


def _mcc(cm: np.ndarray) -> float:
    """Multiclass Matthews correlation (Gorodkin's R_K), same formula and 0-for-degenerate rule as sklearn."""
    cm = cm.astype(np.float64)
    t_sum, p_sum = cm.sum(axis=1), cm.sum(axis=0)
    n, correct = cm.sum(), np.trace(cm)
    cov_tp = correct * n - t_sum @ p_sum
    cov_pp = n * n - p_sum @ p_sum
    cov_tt = n * n - t_sum @ t_sum
    den = cov_tt * cov_pp
    return float(cov_tp / np.sqrt(den)) if den > 0 else 0.0


def _per_class_counts(cm: np.ndarray, class_names: Sequence[str]) -> dict[str, dict]:
    """Precision, recall, specificity, F1 and support of each class, one-vs-rest, from the confusion matrix."""
    n = int(cm.sum())
    out: dict[str, dict] = {}
    for k, name in enumerate(class_names):
        tp = int(cm[k, k])
        support = int(cm[k, :].sum())
        predicted = int(cm[:, k].sum())
        fp, fn = predicted - tp, support - tp
        tn = n - tp - fp - fn
        recall = _ratio(tp, support)
        # sklearn convention: a present class that is never predicted has precision 0 (not undefined)
        precision = _ratio(tp, predicted) if predicted > 0 else (0.0 if support > 0 else None)
        out[str(name)] = {
            "precision": precision,
            "recall": recall,
            "sensitivity": recall,
            "specificity": _ratio(tn, tn + fp),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "support": support,
        }
    return out


def _brier(y: np.ndarray, p: np.ndarray) -> float:
    if p.shape[1] == 2:
        return float(np.mean((p[:, 1] - y) ** 2))
    onehot = np.eye(p.shape[1])[y]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def reliability_bins(y_true: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Top-label reliability table: per equal-width confidence bin, the count, mean confidence and accuracy.

    Confidence is the maximum probability; bins are (lo, hi] with a confidence of exactly 0 in the first.
    Empty bins have count 0 and NaN confidence/accuracy. Used by :func:`classification_metrics` (ECE)
    and by the calibration plot, so the plot and the number always agree.
    """
    y, p = _check_inputs(y_true, probs)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(idx, weights=correct, minlength=n_bins) / count
    return {"edges": np.linspace(0.0, 1.0, n_bins + 1), "count": count, "confidence": mean_conf, "accuracy": accuracy}


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE: mean over bins of |accuracy - mean confidence|, weighted by the fraction of cases in the bin."""
    bins = reliability_bins(y_true, probs, n_bins)
    filled = bins["count"] > 0
    gap = np.abs(bins["accuracy"][filled] - bins["confidence"][filled])
    return float(np.sum(gap * bins["count"][filled]) / bins["count"].sum())


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> dict:
    """All classification metrics of one set of predictions, JSON-ready (plain floats, None for undefined).

    Args:
        y_true: (N,) integer class indices into ``class_names``.
        probs: (N, K) class probabilities (rows should sum to 1; predictions are the argmax).
        class_names: K names, in column order of ``probs``.

    Returns:
        dict with ``n``, ``class_names``, ``positive_class`` (binary only, else None), the scalars in
        :data:`SCALAR_METRICS`, ``confusion_matrix`` (list of K lists, rows = true class) and
        ``per_class`` (name -> precision, recall, sensitivity, specificity, f1, auc, support).
        See the module docstring for the binary/multiclass conventions.
    """
    y, p = _check_inputs(y_true, probs, class_names)
    out = _count_metrics(y, p, class_names)
    out["auc"] = _auc(y, p)
    for name, auc in zip(out["per_class"], _per_class_auc(y, p), strict=True):
        out["per_class"][name]["auc"] = auc
    # fixed key order: identity, scalars in display order, then the tables
    head = {key: out[key] for key in ("n", "class_names", "positive_class")}
    scalars = {key: out[key] for key in SCALAR_METRICS}
    return {**head, **scalars, "confusion_matrix": out["confusion_matrix"], "per_class": out["per_class"]}


def _count_metrics(y: np.ndarray, p: np.ndarray, class_names: Sequence[str]) -> dict:
    """Everything except the AUCs (which need ranks, not counts): cheap enough to run per bootstrap resample."""
    k = p.shape[1]
    cm = _confusion(y, p.argmax(axis=1), k)
    per_class = _per_class_counts(cm, class_names)
    rows = list(per_class.values())
    f1s = [r["f1"] for r in rows]
    supports = [r["support"] for r in rows]
    f1_weighted = sum(f * s for f, s in zip(f1s, supports, strict=True) if f is not None) / sum(supports)
    if k == 2:
        positive = rows[1]
        sensitivity, specificity, f1 = positive["recall"], positive["specificity"], positive["f1"]
    else:
        sensitivity = _mean_defined([r["recall"] for r in rows])
        specificity = _mean_defined([r["specificity"] for r in rows])
        f1 = _mean_defined(f1s)
    return {
        "n": int(y.size),
        "class_names": [str(c) for c in class_names],
        "positive_class": str(class_names[1]) if k == 2 else None,
        "accuracy": float(np.trace(cm) / y.size),
        "balanced_accuracy": _mean_defined([r["recall"] for r in rows]),
        "sensitivity": sensitivity,
        "specificity": specificity,
        "f1": f1,
        "f1_macro": _mean_defined(f1s),
        "f1_weighted": float(f1_weighted),
        "mcc": _mcc(cm),
        "brier": _brier(y, p),
        "ece": expected_calibration_error(y, p),
        "confusion_matrix": cm.tolist(),
        "per_class": per_class,
    }


def _scalar(metric: str, y: np.ndarray, p: np.ndarray) -> float | None:
    """One scalar metric, computed cheaply (AUC needs no confusion matrix, the others no ranks)."""
    if metric == "auc":
        return _auc(y, p)
    if metric == "accuracy":
        return float(np.mean(p.argmax(axis=1) == y))
    if metric == "balanced_accuracy":
        cm = _confusion(y, p.argmax(axis=1), p.shape[1])
        support = cm.sum(axis=1)
        return float(np.mean(np.diag(cm)[support > 0] / support[support > 0]))
    return _count_metrics(y, p, [str(i) for i in range(p.shape[1])])[metric]


def ci_text(interval: Sequence[float | None] | None, digits: int = 3) -> str:
    """``low – high``; ``n/a`` without one (no bootstrap); an interval of one value (every resample gave the same
    number, e.g. a sensitivity of 1.000 on a few positives) is said to be that rather than shown as ``1.000 – 1.000``,
    which would read as certainty."""
    if not interval or interval[0] is None:
        return "n/a"
    low, high = interval
    if round(low, digits) == round(high, digits):
        return f"none (every resample {low:.{digits}f}: too few cases)"
    return f"{low:.{digits}f} – {high:.{digits}f}"


def bootstrap_ci(
    y_true: np.ndarray,
    probs: np.ndarray,
    metric: str = "auc",
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    clusters: Sequence | None = None,
) -> tuple[float | None, float | None]:
    """Percentile bootstrap confidence interval of a scalar metric, resampling cases with replacement.

    For ``auc``, resamples that lack any class present in the data are skipped (the AUC would be
    undefined, or for multiclass a macro over fewer classes); for other metrics only resamples where
    the metric is undefined are skipped. Deterministic for a given ``seed``.

    Args:
        metric: one of :data:`SCALAR_METRICS`.
        alpha: 0.05 gives the 95% interval (the 2.5th and 97.5th percentiles).
        clusters: (N,) cluster of each row (e.g. the case, when each case has one row per repeat of a
            repeated cross-validation): whole clusters are resampled, so repeated rows of one case do not
            narrow the interval. None: every row is its own cluster.

    Returns:
        (low, high), or (None, None) when no resample gives a defined value.
    """
    if metric not in SCALAR_METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(SCALAR_METRICS)}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    y, p = _check_inputs(y_true, probs)
    present = np.unique(y)
    rng = np.random.default_rng(seed)
    members = None
    if clusters is not None:
        if len(clusters) != y.size:
            raise ValueError(f"clusters must have length {y.size}, got {len(clusters)}")
        _, cluster_id = np.unique(np.asarray(clusters), return_inverse=True)
        order = np.argsort(cluster_id, kind="stable")
        members = np.split(order, np.cumsum(np.bincount(cluster_id))[:-1])
    values = []
    for _ in range(n_boot):
        if members is None:
            idx = rng.integers(0, y.size, y.size)
        else:
            idx = np.concatenate([members[c] for c in rng.integers(0, len(members), len(members))])
        yb = y[idx]
        if metric == "auc" and np.unique(yb).size < present.size:
            continue
        value = _scalar(metric, yb, p[idx])
        if value is not None:
            values.append(value)
    if not values:
        return None, None
    low, high = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)
