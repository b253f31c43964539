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
    ema_bn_table(rows)
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


def ema_bn_table(rows: dict[str, list[dict]]) -> None:
    """Rows trained with ``bench_medmnist.py --ema-bn-both``: the EMA validated with recomputed BatchNorm statistics
    (``train.ema_bn_batches=16``, the default) and with its averaged ones (``=0``), on the same training runs."""
    both = {name: records for name, records in rows.items() if all("val_auc_bn_averaged_curve" in r for r in records)}
    if not both:
        return
    print("\n| row | seeds | ema_bn_batches=16: best val AUC | =0: best val AUC | =16: val loss at its best epoch "
          "| =0: val loss at its best epoch | epochs where =16 scores higher |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, records in both.items():
        recomputed = [max(r["val_auc_curve"]) for r in records]
        averaged = [max(r["val_auc_bn_averaged_curve"]) for r in records]
        loss16 = [r["val_loss_curve"][int(np.argmax(r["val_auc_curve"]))] for r in records]
        loss0 = [r["val_loss_bn_averaged_curve"][int(np.argmax(r["val_auc_bn_averaged_curve"]))] for r in records]
        wins = sum(a > b for r in records
                   for a, b in zip(r["val_auc_curve"], r["val_auc_bn_averaged_curve"], strict=True))
        epochs = sum(len(r["val_auc_curve"]) for r in records)
        print(f"| {name} | {len(records)} | {np.mean(recomputed):.3f} ± {np.std(recomputed):.3f} "
              f"| {np.mean(averaged):.3f} ± {np.std(averaged):.3f} | {np.mean(loss16):.3f} | {np.mean(loss0):.3f} "
              f"| {wins} of {epochs} |")


if __name__ == "__main__":
    main()
