"""AdrenalMNIST3D accuracy under the official protocol, through the normal CLI.

For each model and seed: ``medconvnext train`` (train on ``train``, select the epoch on ``val``), then
``medconvnext evaluate --split test`` scores the best checkpoint on ``test`` once (skipped when the data has no
test split, e.g. VesselMNIST3D's train + val file: the rows then hold ``val_auc`` and the training-loss curve
only), and again with ``--tta`` (the mean over the 8 flips). With ``--ensemble`` the seeds of a model are also
evaluated together as one ensemble (``medconvnext evaluate RUN1 RUN2 RUN3``). Prints per-run test AUC /
accuracy and mean ± std over the seeds, and writes JSON (the runs in docs/benchmarks.md: bench/results/adrenal28.json).
Finished runs are not trained again, nor are their up-to-date evaluations run again, so the script can be stopped
and restarted;
several copies may share one results file (each run updates its own entry under a lock), e.g. one process
per seed with ``OMP_NUM_THREADS=1``.

    medconvnext data import-medmnist ../shared/data/adrenalmnist3d.npz --out data/adrenal28
    python bench/bench_medmnist.py --data data/adrenal28 --config configs/medmnist.yaml \
        --models convnext_atto monai_densenet121 --seeds 0 1 2 --tta --out runs/adrenal28
    python bench/bench_medmnist.py --summary --results runs/adrenal28/results.json
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TRAINING_FACTS = ("train_wall_s", "set", "config")  # how a run was trained; kept when it is only re-evaluated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="folder written by `data import-medmnist`")
    parser.add_argument("--config", type=Path)
    parser.add_argument("--models", nargs="+", default=["convnext_atto"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    parser.add_argument("--set", dest="set_", action="append", default=[], help="extra --set for every run")
    parser.add_argument("--tag", default="", help="suffix of the run names (e.g. a variant of --set)")
    parser.add_argument("--tta", action="store_true", help="also evaluate with test-time flips")
    parser.add_argument("--ema-bn-both", action="store_true",
                        help="train through bench/ema_bn_both.py: also record val with the EMA's averaged BatchNorm "
                             "statistics (what train.ema_bn_batches=0 validates)")
    parser.add_argument("--ensemble", action="store_true", help="also evaluate the seeds of a model together")
    parser.add_argument("--out", type=Path, help="folder of the runs")
    parser.add_argument("--results", type=Path, default=None, help="JSON (default: OUT/results.json)")
    parser.add_argument("--summary", action="store_true", help="only print the table of --results")
    args = parser.parse_args()
    if args.summary:
        print_summary(json.loads(args.results.read_text(encoding="utf-8")))
        return
    if args.data is None or args.config is None or args.out is None:
        parser.error("--data, --config and --out are required (unless --summary)")
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.results or args.out / "results.json"
    has_test = _has_test_split(args.data)  # VesselMNIST3D's train + val file: select and report on val only
    if has_test and args.ema_bn_both:
        parser.error("--ema-bn-both saves checkpoints with the averaged statistics, which the run did not select "
                     "on: use it on data without a test split")
    for model in args.models:
        names = [f"{model}{args.tag}_seed{seed}" for seed in args.seeds]
        for seed, name in zip(args.seeds, names, strict=True):
            run_dir = args.out / name
            wall = train_once(args, model, seed, run_dir)
            tested = evaluate_test([run_dir], args.data, run_dir / "eval_test", args.tta) if has_test else {}
            record = {**tested, **run_facts(run_dir)}
            record.update(model=model, seed=seed, tag=args.tag, set=args.set_, config=str(args.config),
                          data=str(args.data))
            if wall is not None:
                record["train_wall_s"] = wall
            update_results(results_path, name, record)
            test = f"test AUC {record['test_auc']:.3f}  ACC {record['test_accuracy']:.3f}  " if has_test else ""
            print(f"{name}: {test}(best epoch {record['best_epoch']}, val AUC {record['val_auc']:.3f}, "
                  f"final train loss {record['final_train_loss']:.3f})", flush=True)
        if args.ensemble and len(names) > 1 and has_test:
            runs = [args.out / name for name in names]
            record = evaluate_test(runs, args.data, args.out / f"{model}{args.tag}_ensemble", args.tta)
            record.update(model=model, seeds=args.seeds, tag=args.tag, ensemble=True, config=str(args.config),
                          intensity=run_intensity(runs[0]))
            update_results(results_path, f"{model}{args.tag}_ensemble", record)
    print_summary(json.loads(results_path.read_text(encoding="utf-8")))


def train_once(args: argparse.Namespace, model: str, seed: int, run_dir: Path) -> float | None:
    """Train unless a finished run is already there; returns the wall time, or None when skipped."""
    if _finished(run_dir):
        return None
    entry = [sys.executable, str(Path(__file__).with_name("ema_bn_both.py"))] if args.ema_bn_both else [
        sys.executable, "-m", "medconvnext"]
    cmd = [*entry, "train", "--data", str(args.data), "--config", str(args.config),
           "--model", model, "--seed", str(seed), "--out", str(run_dir)]
    if (run_dir / "config.yaml").is_file():
        cmd = [*entry, "train", "--resume", str(run_dir)]
    else:
        if args.epochs is not None:
            cmd += ["--epochs", str(args.epochs)]
        for item in args.set_:
            cmd += ["--set", item]
    start = time.perf_counter()
    _run_child(cmd)
    return time.perf_counter() - start


def _run_child(cmd: list[str]) -> None:
    """Run ``cmd``; a SIGTERM to this script stops the child too (a killed study row used to leave its
    ``medconvnext train`` running, slowing every later row on the shared cores)."""
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)

    def stop(signum: int, _frame: object) -> None:
        child.terminate()
        child.wait()
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        if child.wait() != 0:
            raise subprocess.CalledProcessError(child.returncode, cmd)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _has_test_split(data: Path) -> bool:
    """Whether the import holds test cases (a file with a withheld test split has only train and val)."""
    import csv

    with open(data / "labels.csv", newline="", encoding="utf-8") as f:
        return any(row.get("split") == "test" for row in csv.DictReader(f))


def _finished(run_dir: Path) -> bool:
    metrics = run_dir / "metrics.jsonl"
    if not (run_dir / "checkpoint_best.safetensors").is_file() or not metrics.is_file():
        return False
    import yaml

    epochs = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))["train"]["epochs"]
    records = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
    return bool(records) and (records[-1]["epoch"] >= epochs)


def evaluate_test(runs: list[Path], data: Path, out: Path, tta: bool) -> dict:
    """Test AUC (of class 1) and accuracy (at argmax), medmnist's conventions, by ``medconvnext evaluate``;
    with ``tta`` also ``test_auc_tta`` / ``test_accuracy_tta``."""
    record = {}
    for suffix, extra in (("", []), ("_tta", ["--tta"])) if tta else (("", []),):
        target = out.with_name(out.name + suffix)
        if not _up_to_date(target / "summary.json", runs):
            cmd = [sys.executable, "-m", "medconvnext", "evaluate", *map(str, runs), "--data", str(data),
                   "--split", "test", "--out", str(target), "--n-boot", "0", "--device", "cpu", *extra]
            _run_child(cmd)
        pooled = json.loads((target / "summary.json").read_text(encoding="utf-8"))["pooled"]
        record.update({f"test_auc{suffix}": pooled["auc"], f"test_accuracy{suffix}": pooled["accuracy"],
                       "n_test": pooled["n"]})
    return record


def _up_to_date(summary: Path, runs: list[Path]) -> bool:
    """An evaluation written after every run's best checkpoint need not run again (a TTA pass of DenseNet121
    over the test set takes minutes on one CPU thread)."""
    checkpoints = [run / "checkpoint_best.safetensors" for run in runs]
    return summary.is_file() and all(summary.stat().st_mtime > c.stat().st_mtime for c in checkpoints)


def run_facts(run_dir: Path) -> dict:
    """The epoch the run selected on ``val`` (its best val AUC), its epoch times and its resolved intensity."""
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    best = max(metrics, key=lambda r: (r["val_auc"] or 0.0, -r["val_loss"]))
    return {"best_epoch": best["epoch"], "val_auc": best["val_auc"], "epochs_run": metrics[-1]["epoch"],
            "train_loss": [r["train_loss"] for r in metrics], "val_auc_curve": [r["val_auc"] for r in metrics],
            "val_loss_curve": [r["val_loss"] for r in metrics],
            **({"val_auc_bn_averaged_curve": [r["val_auc_bn_averaged"] for r in metrics],
                "val_loss_bn_averaged_curve": [r["val_loss_bn_averaged"] for r in metrics]}
               if "val_auc_bn_averaged" in metrics[0] else {}),
            "final_train_loss": metrics[-1]["train_loss"],
            "intensity": run_intensity(run_dir),
            "mean_epoch_s": float(np.mean([r["epoch_time_s"] for r in metrics])),
            "total_epoch_s": float(np.sum([r["epoch_time_s"] for r in metrics]))}


def run_intensity(run_dir: Path) -> str:
    """The intensity normalisation the run resolved (``auto`` -> what the modality gave), from its checkpoint."""
    checkpoint = json.loads((run_dir / "checkpoint_best.json").read_text(encoding="utf-8"))
    return checkpoint["preprocessing"]["intensity"]


def update_results(path: Path, name: str, record: dict) -> None:
    """Set ``results[name] = record`` in the JSON file, under a lock (several bench processes may share it).

    A run re-evaluated without retraining (no ``train_wall_s``) keeps what was recorded when it was trained: its
    training time, overrides and config."""
    with open(path.with_suffix(".lock"), "w", encoding="utf-8") as lock, _locked(lock):
        results = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        if "train_wall_s" not in record and not record.get("ensemble"):
            previous = results.get(name, {})
            record = {**record, **{k: previous[k] for k in TRAINING_FACTS if k in previous}}
        results[name] = record
        path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


@contextlib.contextmanager
def _locked(handle):
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)


def print_summary(results: dict) -> None:
    """Mean ± std over the seeds of each model (+ tag), then the seed ensembles."""
    groups: dict[str, list[dict]] = {}
    for record in results.values():
        if not record.get("ensemble"):
            groups.setdefault(record["model"] + record.get("tag", ""), []).append(record)
    print(f"\n{'model':36s} {'seeds':>5s} {'val AUC':>15s} {'train loss':>15s} {'test AUC':>15s} {'test ACC':>15s} "
          f"{'AUC (TTA)':>15s} {'ACC (TTA)':>15s} {'train min':>9s}")
    for name, records in groups.items():
        cells = [_mean_std([r.get(key) for r in records])
                 for key in ("val_auc", "final_train_loss", "test_auc", "test_accuracy", "test_auc_tta",
                             "test_accuracy_tta")]
        minutes = np.mean([r.get("total_epoch_s", r["mean_epoch_s"] * r["epochs_run"]) for r in records]) / 60
        print(f"{name:36s} {len(records):5d} {' '.join(f'{c:>15s}' for c in cells)} {minutes:9.1f}")
    for name, record in results.items():
        if record.get("ensemble"):
            cells = [f"{record[k]:.3f}" if k in record else "-"
                     for k in ("test_auc", "test_accuracy", "test_auc_tta", "test_accuracy_tta")]
            print(f"{name:36s} {len(record['seeds']):5d} {'':>15s} {'':>15s} {' '.join(f'{c:>15s}' for c in cells)}")


def _mean_std(values: list) -> str:
    if any(v is None for v in values):
        return "-"
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


if __name__ == "__main__":
    main()
