"""How far a test set can separate recipes: bootstrap CIs, a paired comparison, and the ensemble of every model.

For the note on issue 13's 0.90 AUC target. Reads prediction tables (``predictions.csv`` written by ``medconvnext
evaluate``; the same cases in every table, matched by file name, e.g. the 28³ and the 64³ copies of a case) and
prints, for each table, test AUC and accuracy with percentile-bootstrap 95 % CIs (cases resampled); the paired
bootstrap of each table's AUC against the first one (the same resampled cases for both, so the interval is the
one of the difference); and the AUC / accuracy of the mean probability of every table given (an ensemble of
everything trained, an optimistic upper reference: it was not selected on validation).

    python bench/testset_limits.py runs/adrenal28/*_seed*/eval_test/predictions.csv --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from medconvnext.results.metrics import bootstrap_ci, classification_metrics
from medconvnext.results.table import read_predictions


def load(paths: list[Path]) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """(case names, labels (N,), probabilities (T, N, K), class names) with the rows of every table aligned."""
    tables = [read_predictions(p) for p in paths]
    names = sorted(Path(i).name for i in tables[0].images)
    stacked = []
    for path, table in zip(paths, tables, strict=True):
        order = {Path(i).name: k for k, i in enumerate(table.images)}
        if sorted(order) != names:
            sys.exit(f"{path}: other cases than {paths[0]}")
        stacked.append(table.probs[[order[n] for n in names]])
    first = {Path(i).name: k for k, i in enumerate(tables[0].images)}
    labels = tables[0].y_true[[first[n] for n in names]]
    return names, labels, np.stack(stacked), list(tables[0].class_names)


def paired_auc_difference(y: np.ndarray, a: np.ndarray, b: np.ndarray, n_boot: int, seed: int) -> list[float]:
    """95 % percentile interval of AUC(b) - AUC(a) over the same bootstrap resamples of the cases."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if len(np.unique(y[idx])) < 2:
            continue
        diffs.append(roc_auc_score(y[idx], b[idx, 1]) - roc_auc_score(y[idx], a[idx, 1]))
    return [float(v) for v in np.quantile(diffs, [0.025, 0.975])]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tables", nargs="+", type=Path, help="predictions.csv files (the first is the reference)")
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    names, y, probs, classes = load(args.tables)
    rows = []
    print(f"{len(names)} cases ({int((y == 1).sum())} positive), {len(args.tables)} tables")
    print(f"{'table':70s} {'AUC':>6s} {'95% CI':>13s} {'ACC':>6s} {'95% CI':>13s} {'AUC - first (95% CI)':>22s}")
    for path, p in zip(args.tables, probs, strict=True):
        m = classification_metrics(y, p, classes)
        auc_ci = bootstrap_ci(y, p, "auc", args.n_boot, seed=args.seed)
        acc_ci = bootstrap_ci(y, p, "accuracy", args.n_boot, seed=args.seed)
        diff = paired_auc_difference(y, probs[0], p, args.n_boot, args.seed)
        rows.append({"table": str(path), "auc": m["auc"], "auc_ci": list(auc_ci), "accuracy": m["accuracy"],
                     "accuracy_ci": list(acc_ci), "auc_minus_first_ci": diff})
        print(f"{str(path)[-70:]:70s} {m['auc']:6.3f} {auc_ci[0]:6.3f}-{auc_ci[1]:.3f} {m['accuracy']:6.3f} "
              f"{acc_ci[0]:6.3f}-{acc_ci[1]:.3f} {diff[0]:+10.3f} to {diff[1]:+.3f}")
    mean = probs.mean(axis=0)
    m = classification_metrics(y, mean, classes)
    auc_ci = bootstrap_ci(y, mean, "auc", args.n_boot, seed=args.seed)
    everything = {"tables": len(args.tables), "auc": m["auc"], "auc_ci": list(auc_ci), "accuracy": m["accuracy"]}
    print(f"mean probability of all {len(args.tables)} tables: AUC {m['auc']:.3f} ({auc_ci[0]:.3f}-{auc_ci[1]:.3f}),"
          f" ACC {m['accuracy']:.3f}")
    report = {"cases": len(names), "positives": int((y == 1).sum()), "n_boot": args.n_boot, "rows": rows,
              "mean_of_all": everything}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
