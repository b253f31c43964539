"""Report figures as PNG files: ROC, precision-recall, confusion matrix, calibration, training curves.

matplotlib is a dependency, imported inside the functions so that importing this module stays cheap (and
:func:`matplotlib_available` still tells callers whether a broken install can draw). Figures are drawn on the
Agg canvas directly (``matplotlib.figure.Figure`` + ``FigureCanvasAgg``) rather than through pyplot,
so the report never switches the caller's global backend (e.g. inside a notebook) and leaks no
figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from medconvnext.fileio import atomic_write
from medconvnext.reports.training_log import CURVE_KEYS
from medconvnext.results.metrics import binary_auc, expected_calibration_error, reliability_bins

__all__ = [
    "matplotlib_available",
    "plot_roc",
    "plot_pr",
    "plot_confusion",
    "plot_calibration",
    "plot_recalibration",
    "plot_training_curves",
]

DPI = 110


def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1, **kwargs):
    """A Figure on an Agg canvas and its axes; raises ImportError when matplotlib is missing."""
    import matplotlib  # noqa: F401  (imported first so a missing/blocked matplotlib fails here)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format=path.suffix.lstrip(".") or "png"))
    return path


def preload() -> None:
    """Import what the figures need, now: ``train`` calls it before its first epoch. Imported lazily at an
    epoch's end instead, a Ctrl-C that lands inside a C extension's initialisation can surface as
    ``ImportError: initialization failed``, which the figure's warning would swallow, and the run would go on.

    Raises:
        ImportError: matplotlib (or Pillow, which writes its PNGs) is missing or broken.
    """
    import matplotlib.image  # noqa: F401  (Pillow, for PNG)
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    from matplotlib.figure import Figure  # noqa: F401
    from matplotlib.ticker import MaxNLocator  # noqa: F401


def matplotlib_available() -> bool:
    """True when matplotlib can be imported (plots are drawn), False for a text-only report."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _curve_classes(class_names: Sequence[str]) -> list[int]:
    # binary: one curve for the positive class; multiclass: one-vs-rest curve per class
    return [1] if len(class_names) == 2 else list(range(len(class_names)))


def plot_roc(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str], path: str | Path) -> Path:
    """ROC curve (binary: positive class) or one-vs-rest curves per class plus their macro average."""
    from sklearn.metrics import roc_curve

    fig, axes = _figure(5.2, 4.8)
    ax = axes[0, 0]
    grid = np.linspace(0.0, 1.0, 201)
    tprs, aucs = [], []
    for k in _curve_classes(class_names):
        positive = y_true == k
        auc = binary_auc(positive, probs[:, k])
        if auc is None:  # class absent (or alone): no curve
            continue
        fpr, tpr, _ = roc_curve(positive, probs[:, k])
        tprs.append(np.interp(grid, fpr, tpr))
        aucs.append(auc)
        ax.plot(fpr, tpr, lw=1.6, label=f"{class_names[k]} vs rest (AUC {auc:.3f})" if len(class_names) > 2 else
                f"{class_names[k]} (AUC {auc:.3f})")
    if len(class_names) > 2 and tprs:
        ax.plot(grid, np.mean(tprs, axis=0), color="black", lw=2.2, ls="--",
                label=f"macro average (AUC {np.mean(aucs):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="chance")
    ax.set(xlabel="False positive rate (1 - specificity)", ylabel="True positive rate (sensitivity)",
           xlim=(0, 1), ylim=(0, 1.01), title="ROC")
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_pr(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str], path: str | Path) -> Path:
    """Precision-recall curve(s) with average precision; dotted lines mark each class's prevalence (chance)."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    fig, axes = _figure(5.2, 4.8)
    ax = axes[0, 0]
    for k in _curve_classes(class_names):
        positive = y_true == k
        if not positive.any():
            continue
        precision, recall, _ = precision_recall_curve(positive, probs[:, k])
        ap = average_precision_score(positive, probs[:, k])
        (line,) = ax.plot(recall, precision, lw=1.6, label=f"{class_names[k]} (AP {ap:.3f})")
        ax.axhline(positive.mean(), color=line.get_color(), lw=0.8, ls=":")
    ax.set(xlabel="Recall (sensitivity)", ylabel="Precision (PPV)", xlim=(0, 1), ylim=(0, 1.01),
           title="Precision-recall")
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def plot_confusion(confusion_matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path) -> Path:
    """Confusion matrix: each cell shows its count and its row percentage (share of the true class); colour =
    row percentage, so a rare class reads as clearly as a common one. Rows = true class."""
    counts = np.asarray(confusion_matrix, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.nan_to_num(counts / counts.sum(axis=1, keepdims=True))
    k = len(class_names)
    size = 3.6 + 0.9 * k
    fig, axes = _figure(size + 1.2, size)
    ax = axes[0, 0]
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="Share of the true class")
    ticks = np.arange(k)
    ax.set_xticks(ticks, [str(c) for c in class_names], rotation=30 if k > 3 else 0, ha="right" if k > 3 else "center",
                  fontsize=11)
    ax.set_yticks(ticks, [str(c) for c in class_names], fontsize=11)
    ax.set_xlabel("Predicted class", fontsize=12)
    ax.set_ylabel("True class", fontsize=12)
    ax.set_title("Confusion matrix (count and row %)", fontsize=12)
    for i in ticks:
        for j in ticks:
            colour = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, f"{counts[i, j]:.0f}\n{100 * share[i, j]:.0f}%", ha="center", va="center", color=colour,
                    fontsize=13 if k <= 4 else 10, fontweight="bold" if i == j else "normal")
    return _save(fig, path)


def plot_calibration(y_true: np.ndarray, probs: np.ndarray, path: str | Path, n_bins: int = 15) -> Path:
    """Reliability diagram of the top-label confidence (same bins as the ECE), with a histogram of confidences."""
    bins = reliability_bins(y_true, probs, n_bins)
    edges, count = bins["edges"], bins["count"]
    filled = count > 0
    ece = expected_calibration_error(y_true, probs, n_bins)
    fig, axes = _figure(5.0, 5.6, nrows=2, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax, hist = axes[0, 0], axes[1, 0]
    width = edges[1] - edges[0]
    ax.bar(edges[:-1][filled], bins["accuracy"][filled], width=width, align="edge", edgecolor="black",
           color="#4c72b0", alpha=0.8, label="accuracy in bin")
    ax.plot(bins["confidence"][filled], bins["accuracy"][filled], "o", color="#dd8452", ms=4,
            label="mean confidence in bin")
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfect calibration")
    ax.set(ylabel="Accuracy", xlim=(0, 1), ylim=(0, 1), title=f"Calibration (ECE {ece:.3f}, {n_bins} bins)")
    ax.legend(loc="upper left", fontsize=8)
    hist.bar(edges[:-1], count, width=width, align="edge", color="grey", edgecolor="black")
    hist.set(xlabel="Confidence (max probability)", ylabel="Cases")
    return _save(fig, path)


def plot_recalibration(y_true: np.ndarray, before: np.ndarray, after: np.ndarray, temperature: float,
                       path: str | Path, n_bins: int = 15) -> Path:
    """Two reliability diagrams side by side: raw probabilities and after temperature scaling (with ECE each)."""
    fig, axes = _figure(11.0, 4.8, ncols=2, sharey=True)
    panels = ((axes[0, 0], before, "Before (raw)"), (axes[0, 1], after, f"After (T = {temperature:.2f})"))
    for ax, probs, title in panels:
        bins = reliability_bins(y_true, probs, n_bins)
        edges, count = bins["edges"], bins["count"]
        filled = count > 0
        width = edges[1] - edges[0]
        ax.bar(edges[:-1][filled], bins["accuracy"][filled], width=width, align="edge", edgecolor="black",
               color="#4c72b0", alpha=0.8, label="accuracy in bin")
        ax.plot(bins["confidence"][filled], bins["accuracy"][filled], "o", color="#dd8452", ms=5,
                label="mean confidence in bin")
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfect calibration")
        ece = expected_calibration_error(y_true, probs, n_bins)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="Confidence (max probability)")
        ax.set_title(f"{title}: ECE {ece:.3f}", fontsize=12)
    axes[0, 0].set_ylabel("Accuracy")
    axes[0, 0].legend(loc="upper left", fontsize=9)
    return _save(fig, path)


def _series(records: Sequence[Mapping], key: str) -> tuple[list, list]:
    """(epochs, values) of one key, skipping records where it is missing or null."""
    points = [
        (r.get("epoch", i), r[key]) for i, r in enumerate(records) if isinstance(r.get(key), (int, float))
    ]
    return [p[0] for p in points], [p[1] for p in points]


def plot_training_curves(logs: Mapping[str, Sequence[Mapping]], path: str | Path) -> Path | None:
    """Loss (left: train solid, validation dashed) and validation AUC/accuracy (right) per fold.

    Args:
        logs: fold label -> epoch records (see :func:`medconvnext.reports.training_log.read_training_log`).

    Returns:
        The PNG path, or None when no record has any curve value.
    """
    if not any(_series(records, key)[0] for records in logs.values() for key in CURVE_KEYS):
        return None
    from matplotlib.ticker import MaxNLocator

    # full report width (the HTML shows it at 100%): two panels with readable text, the legend outside the data
    fig, axes = _figure(14.0, 5.0, ncols=2)
    loss_ax, metric_ax = axes[0, 0], axes[0, 1]
    colours = [f"C{i % 10}" for i in range(len(logs))]
    for colour, (fold, records) in zip(colours, logs.items(), strict=True):
        labelled = set()  # one legend entry per fold and panel: the line style already says which series
        for ax, key, style in (
            (loss_ax, "train_loss", "-"),
            (loss_ax, "val_loss", "--"),
            (metric_ax, "val_auc", "-"),
            (metric_ax, "val_accuracy", ":"),
        ):
            epochs, values = _series(records, key)
            if epochs:
                label = None if id(ax) in labelled else str(fold)
                labelled.add(id(ax))
                ax.plot(epochs, values, ls=style, color=colour, lw=1.8, marker="o" if len(epochs) <= 30 else None,
                        ms=3, label=label)
    loss_ax.set_title("Loss (train solid, validation dashed)", fontsize=13)
    loss_ax.set_ylabel("Loss", fontsize=12)
    metric_ax.set_title("Validation AUC (solid) and accuracy (dotted)", fontsize=13)
    metric_ax.set_ylabel("Validation metric", fontsize=12)
    metric_ax.set_ylim(0, 1.01)
    for ax in (loss_ax, metric_ax):
        ax.set_xlabel("Epoch", fontsize=12)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs only
        ax.tick_params(labelsize=11)
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=10, ncols=2 if len(logs) > 5 else 1, loc="best")
    return _save(fig, path)
