"""Markdown rows of the ConvNeXt design study (docs/benchmarks.md) from the two results files.

``--results`` is what ``bench_medmnist.py`` wrote (test of the best-val-epoch checkpoint, with and without TTA,
per run); ``--selection`` is what ``selection_rule.py`` wrote (val and test of the best and the last
checkpoint). One row per run group (name without ``_seedN``): mean ± std over its seeds.

    python bench/study_table.py --results bench/results/convnext_study.json \
        --selection bench/results/convnext_study_selection.json
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--selection", type=Path, default=None)
    parser.add_argument("--runs", type=Path, default=None,
                        help="folder of the run directories: also print mean val AUC / train loss per epoch")
    args = parser.parse_args()
    results = json.loads(args.results.read_text(encoding="utf-8"))
    selection = json.loads(args.selection.read_text(encoding="utf-8")) if args.selection else {}
    groups: dict[str, list[str]] = {}
    for name, record in results.items():
        if not record.get("ensemble"):
            groups.setdefault(re.sub(r"_seed\d+$", "", name), []).append(name)
    print("| run group | seeds | test AUC (best val epoch) | test ACC | test AUC, TTA | test AUC (last epoch) | "
          "test ACC (last) | val AUC (best) | best epochs | min / run |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for group, names in groups.items():
        records = [results[n] for n in names]
        last = [selection[n]["last"] for n in names if n in selection]
        cells = [
            mean_std([r["test_auc"] for r in records]),
            mean_std([r["test_accuracy"] for r in records]),
            mean_std([r["test_auc_tta"] for r in records if "test_auc_tta" in r]),
            mean_std([s["test_auc"] for s in last]) + ("" if len(last) == len(names) else f" ({len(last)})"),
            mean_std([s["test_acc"] for s in last]),
            mean_std([r["val_auc"] for r in records]),
            ", ".join(str(r["best_epoch"]) for r in records),
            f"{np.mean([r['total_epoch_s'] for r in records]) / 60:.0f}",
        ]
        print(f"| {group} | {len(records)} | " + " | ".join(cells) + " |")
    if args.runs is not None:
        print_curves(args.runs, groups)
    print_ensembles(results)


def print_ensembles(results: dict[str, dict]) -> None:
    """The seed ensembles (the mean probability of a group's runs), without and with TTA."""
    print("\n| ensemble | test AUC | test ACC | test AUC, TTA | test ACC, TTA |")
    print("| --- | --- | --- | --- | --- |")
    for name, r in results.items():
        if r.get("ensemble"):
            tta = [f"{r[k]:.3f}" if r.get(k) is not None else "-" for k in ("test_auc_tta", "test_accuracy_tta")]
            print(f"| {name} | {r['test_auc']:.3f} | {r['test_accuracy']:.3f} | {tta[0]} | {tta[1]} |")


def print_curves(runs: Path, groups: dict[str, list[str]]) -> None:
    """Mean over seeds of val AUC and train loss at each epoch: where each variant peaks and how fast it fits."""
    print("\n| run group | val AUC by epoch (1, 3, 5, ...) | train loss at epochs 1 / 5 / last |")
    print("| --- | --- | --- |")
    for group, names in groups.items():
        curves = [[json.loads(line) for line in (runs / n / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
                  for n in names if (runs / n / "metrics.jsonl").is_file()]
        if not curves:
            continue
        epochs = min(len(c) for c in curves)
        auc = [np.mean([c[e]["val_auc"] for c in curves]) for e in range(epochs)]
        loss = [np.mean([c[e]["train_loss"] for c in curves]) for e in range(epochs)]
        shown = " ".join(f"{a:.3f}" for a in auc[::2])
        print(f"| {group} | {shown} | {loss[0]:.3f} / {loss[min(4, epochs - 1)]:.3f} / {loss[-1]:.3f} |")


if __name__ == "__main__":
    main()
