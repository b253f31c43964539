"""The VesselMNIST3D diagnosis table and training-loss curves from `bench_medmnist.py`'s results JSON.

    python bench/vessel_diagnosis_table.py bench/results/vessel28_diagnosis.json --figure docs/img/vessel_train_loss.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path)
    parser.add_argument("--figure", type=Path, default=None, help="PNG of the mean training-loss curve per row")
    args = parser.parse_args()
    rows: dict[str, list[dict]] = {}
    for record in json.loads(args.results.read_text(encoding="utf-8")).values():
        rows.setdefault(record["model"] + record.get("tag", ""), []).append(record)
    print("| row | --set | seeds | val AUC (best epoch) | train loss, last epoch | best epochs |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, records in rows.items():
        records.sort(key=lambda r: r["seed"])
        val = [r["val_auc"] for r in records]
        loss = [r["final_train_loss"] for r in records]
        sets = " ".join(records[0].get("set", [])) or "-"
        print(f"| {name} | `{sets}` | {len(records)} | {np.mean(val):.3f} ± {np.std(val):.3f} "
              f"| {np.mean(loss):.3f} ± {np.std(loss):.3f} | {', '.join(str(r['best_epoch']) for r in records)} |")
    if args.figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for name, records in rows.items():
            curves = np.array([r["train_loss"] for r in records if "train_loss" in r])
            ax.plot(np.arange(1, curves.shape[1] + 1), curves.mean(0), label=f"{name} ({len(curves)} seeds)")
        ax.axhline(0.35, color="grey", linestyle=":", label="class prior only (0.35)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss (mean over seeds)")
        ax.set_title("VesselMNIST3D, 28³, configs/medmnist.yaml")
        ax.legend(fontsize=7)
        fig.tight_layout()
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.figure, dpi=120)


if __name__ == "__main__":
    main()
