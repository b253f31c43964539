"""AdrenalMNIST3D accuracy under the official protocol, through the normal CLI.

For each model and seed: ``medconvnext train`` (train on ``train``, select on ``val``), then
``medconvnext evaluate --split test`` scores the best checkpoint on ``test`` once. Prints per-run test AUC /
accuracy and mean ± std per model, and writes JSON (the runs in docs/benchmarks.md: bench/results/adrenal28.json).
Runs that already finished (``checkpoint_best`` + a complete metrics.jsonl) are not trained again, so the
script can be stopped and restarted.

    medconvnext data import-medmnist ../shared/data/adrenalmnist3d.npz --out data/adrenal28
    python bench/bench_medmnist.py --data data/adrenal28 --config configs/medmnist.yaml \
        --models convnext_atto monai_densenet121 --seeds 0 1 2 --out runs/adrenal28
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder written by `data import-medmnist`")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--models", nargs="+", default=["convnext_atto"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    parser.add_argument("--set", dest="set_", action="append", default=[], help="extra --set for every run")
    parser.add_argument("--tag", default="", help="suffix of the run names (e.g. a variant of --set)")
    parser.add_argument("--out", type=Path, required=True, help="folder of the runs")
    parser.add_argument("--results", type=Path, default=None, help="JSON (default: OUT/results.json)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.results or args.out / "results.json"
    results = json.loads(results_path.read_text(encoding="utf-8")) if results_path.is_file() else {}
    for model in args.models:
        for seed in args.seeds:
            name = f"{model}{args.tag}_seed{seed}"
            run_dir = args.out / name
            wall = train_once(args, model, seed, run_dir)
            record = evaluate_test(run_dir, args.data)
            record.update(model=model, seed=seed, tag=args.tag, set=args.set_, config=str(args.config))
            if wall is not None:
                record["train_wall_s"] = wall
            elif name in results and "train_wall_s" in results[name]:
                record["train_wall_s"] = results[name]["train_wall_s"]
            results[name] = record
            results_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
            print(f"{name}: test AUC {record['test_auc']:.3f}  ACC {record['test_accuracy']:.3f}  "
                  f"(best epoch {record['best_epoch']}, val AUC {record['val_auc']:.3f})", flush=True)
    print_summary(results)


def train_once(args: argparse.Namespace, model: str, seed: int, run_dir: Path) -> float | None:
    """Train unless a finished run is already there; returns the wall time, or None when skipped."""
    if _finished(run_dir):
        return None
    cmd = [sys.executable, "-m", "medconvnext", "train", "--data", str(args.data), "--config", str(args.config),
           "--model", model, "--seed", str(seed), "--out", str(run_dir)]
    if (run_dir / "config.yaml").is_file():
        cmd = [sys.executable, "-m", "medconvnext", "train", "--resume", str(run_dir)]
    else:
        if args.epochs is not None:
            cmd += ["--epochs", str(args.epochs)]
        for item in args.set_:
            cmd += ["--set", item]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _finished(run_dir: Path) -> bool:
    metrics = run_dir / "metrics.jsonl"
    if not (run_dir / "checkpoint_best.safetensors").is_file() or not metrics.is_file():
        return False
    import yaml

    epochs = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))["train"]["epochs"]
    records = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
    return bool(records) and (records[-1]["epoch"] >= epochs)


def evaluate_test(run_dir: Path, data: Path) -> dict:
    """Test metrics of the best checkpoint by ``medconvnext evaluate --split test`` (AUC of class 1, accuracy at
    argmax: medmnist's conventions), plus the epoch the run selected on ``val``."""
    out = run_dir / "eval_test"
    cmd = [sys.executable, "-m", "medconvnext", "evaluate", str(run_dir), "--data", str(data), "--split", "test",
           "--out", str(out), "--n-boot", "0", "--device", "cpu"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    pooled = json.loads((out / "summary.json").read_text(encoding="utf-8"))["pooled"]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    best = max(metrics, key=lambda r: (r["val_auc"] or 0.0, -r["val_loss"]))
    return {
        "test_auc": pooled["auc"],
        "test_accuracy": pooled["accuracy"],
        "n_test": pooled["n"],
        "best_epoch": best["epoch"],
        "val_auc": best["val_auc"],
        "epochs_run": metrics[-1]["epoch"],
        "mean_epoch_s": float(np.mean([r["epoch_time_s"] for r in metrics])),
    }


def print_summary(results: dict) -> None:
    groups: dict[str, list[dict]] = {}
    for record in results.values():
        groups.setdefault(record["model"] + record.get("tag", ""), []).append(record)
    print(f"\n{'model':32s} {'seeds':>5s} {'test AUC':>15s} {'test ACC':>15s} {'epoch s':>8s}")
    for name, records in groups.items():
        auc = np.array([r["test_auc"] for r in records])
        acc = np.array([r["test_accuracy"] for r in records])
        epoch_s = np.mean([r["mean_epoch_s"] for r in records])
        print(f"{name:32s} {len(records):5d} {auc.mean():8.3f} ± {auc.std():.3f} {acc.mean():8.3f} ± {acc.std():.3f} "
              f"{epoch_s:8.1f}")


if __name__ == "__main__":
    main()
