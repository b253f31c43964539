"""Multiple-instance learning against whole-volume training on a synthetic nodule task, one seed per run.

Generates chest phantoms (``medconvnext.data.synthetic.chest_ct``: a body with two lungs; class ``nodule`` holds a
soft-tissue sphere of 6-15 mm diameter somewhere in a lung, class ``clear`` none), then trains with
``medconvnext train`` twice on the same split (``split`` column: the last ``--val`` cases validate):

- ``whole``: the planner fits the whole body into ``--budget`` voxels by the spacing (a 6 mm nodule shrinks to a
  fraction of a voxel once the spacing is coarser than the nodule);
- ``mil``: ``train.patches=mil`` with ``--patch``³ tiles at the scan's own spacing, bags of ``--bag`` tiles
  (as many as the grid over the body: the whole body in every bag), gated-attention pooling; validation pools
  every sliding window.

Each with the encoder's global pooling ``--pool`` (``model.args.global_pool``: ``max``, MIL's default, and/or
``avg``, the families' default); a run is keyed ``{mil|whole}_{pool}_seed{S}``.

Prints the best validation AUC and the training loss per epoch of each, and writes JSON. A finished run is not
trained again when the script is rerun (runs take tens of minutes on 2 CPU cores). For the MIL run, also where
its attention rests: ``predict --window-map`` on the validation scans with a nodule, and the rank of the window
holding the nodule among the scan's windows (1 = the model looked there first).

    python bench/bench_mil.py --out /tmp/mil --train 400 --val 100 --model convnext_med_iso --pool max avg \
        --results bench/results/mil_nodules_400.json
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--train", type=int, default=40, help="training scans (half with a nodule)")
    parser.add_argument("--val", type=int, default=20, help="validation scans (half with a nodule)")
    parser.add_argument("--test", type=int, default=0,
                        help="test scans (half with a nodule; in scans_test/), scored once by `evaluate` on each "
                             "run's best-validation checkpoint")
    parser.add_argument("--shape", type=int, nargs=3, default=[160, 160, 80])
    parser.add_argument("--spacing", type=float, nargs=3, default=[2.4, 2.4, 3.0], help="mm")
    parser.add_argument("--budget", type=int, default=32**3, help="whole-volume input voxels")
    parser.add_argument("--patch", type=int, default=32, help="MIL tile side, voxels")
    parser.add_argument("--bag", type=int, default=48, help="MIL tiles per bag")
    parser.add_argument("--model", default="convmixer_128_4")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--layer-decay", type=float, default=None,
                        help="train.layer_decay (a ConvNeXt encoder): the MIL head at --lr, the encoder below it")
    parser.add_argument("--runs", nargs="+", default=["mil", "whole"], choices=["mil", "whole"])
    parser.add_argument("--pool", nargs="+", default=["max"], choices=["avg", "max"],
                        help="model.args.global_pool of the runs (MIL's default is max), one run per value")
    args = parser.parse_args()
    data = generate(args.out / "scans", args.train, args.val, tuple(args.shape), tuple(args.spacing))
    path = args.results or args.out / "mil_nodules.json"
    results = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    common = ["--model", args.model, "--epochs", str(args.epochs), "--seed", str(args.seed), "--batch-size", "2",
              "--lr", str(args.lr), "--set", "data.cache=memory", "--set", "data.augment=flips"]
    if args.layer_decay is not None:
        common += ["--set", f"train.layer_decay={args.layer_decay}"]
    settings = {
        "whole": ["--set", f"preprocessing.max_input_voxels={args.budget}"],
        "mil": ["--set", "train.patches=mil", "--set", f"preprocessing.input_size=[{args.patch},{args.patch},"
                f"{args.patch}]", "--set", f"preprocessing.max_input_voxels={10**9}", "--set",
                f"train.mil_bag_size={args.bag}", "--set", "inference.mode=sliding"],
    }
    for name, pool in [(name, pool) for name in args.runs for pool in args.pool]:
        key = f"{name}_{pool}_seed{args.seed}"
        if key in results:
            continue
        run = args.out / key
        cmd = [sys.executable, "-m", "medconvnext", "train", "--data", str(data), "--config",
               str(REPO / "configs" / "ct.yaml"), "--out", str(run), "--overwrite", *common, *settings[name],
               "--set", f"model.args.global_pool={pool}"]
        print(" ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        results[key] = summarise(run, cmd[1:])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    if args.test:
        tests = generate(args.out / "scans_test", 0, args.test, tuple(args.shape), tuple(args.spacing),
                         first=args.train + args.val, split="test")
        for key in [f"{name}_{pool}_seed{args.seed}" for name in args.runs for pool in args.pool]:
            if key in results and "test_auc" not in results[key]:
                results[key]["test_auc"] = test_auc(args.out / key, tests)
                path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    for mil in [f"mil_{pool}_seed{args.seed}" for pool in args.pool]:
        if mil in results and "attention" not in results[mil]:
            results[mil]["attention"] = attention_ranks(args.out / mil, data, args.train, args.val,
                                                        tuple(args.shape), tuple(args.spacing))
            path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    for key, row in results.items():
        print(f"{key:14s} best val AUC {row['best_val_auc']:.3f} (epoch {row['best_epoch']}), spacing "
              f"{row['spacing']}, input {row['input_size']}, train loss {[round(x, 3) for x in row['train_loss']]}")
        for scan in row.get("attention", []):
            print(f"  ct_{scan['scan']:03d} ({scan['radius_mm']} mm): the nodule's window ranks {scan['rank']} of "
                  f"{scan['windows']} (attention {scan['attention_at_nodule']:.4f}, "
                  f"largest {scan['attention_max']:.4f})")


def generate(folder: Path, train: int, val: int, shape: tuple[int, int, int],
             spacing: tuple[float, float, float], first: int = 0, split: str = "val") -> Path:
    """Phantoms ``first`` to ``first + train + val - 1`` and ``labels.csv`` with a split column (the last ``val``
    in ``split``); a complete folder is reused between runs."""
    from medconvnext.data.synthetic import chest_ct, save_phantom

    labels = folder / "labels.csv"
    if labels.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(first, first + train + val):
        nodule = i % 2 == 0
        rng = np.random.default_rng(5000 + i)
        phantom = chest_ct(shape, spacing, nodule=nodule, seed=5000 + i, periphery=bool(rng.integers(2)))
        save_phantom(phantom, str(folder / f"ct_{i:03d}.nii.gz"))
        rows.append({"image": f"ct_{i:03d}.nii.gz", "label": "nodule" if nodule else "clear",
                     "split": "train" if i < first + train else split})
    with open(labels, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["image", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return folder


def attention_ranks(run: Path, data: Path, train: int, val: int, shape: tuple[int, int, int],
                    spacing: tuple[float, float, float]) -> list[dict]:
    """Per validation scan with a nodule: the attention of the window holding the nodule's centre, the largest
    attention, and the nodule window's rank among the scan's windows."""
    import nibabel as nib

    from medconvnext.data.synthetic import chest_ct

    scans = [i for i in range(train, train + val) if i % 2 == 0]
    maps = run / "window_maps"
    subprocess.run([sys.executable, "-m", "medconvnext", "predict", *[str(data / f"ct_{i:03d}.nii.gz") for i in scans],
                    "--model", str(run), "--window-map", str(maps), "--output", str(maps / "predictions.csv"),
                    "--overwrite"], check=True, stdout=subprocess.DEVNULL)
    rows = []
    for i in scans:
        rng = np.random.default_rng(5000 + i)
        phantom = chest_ct(shape, spacing, nodule=True, seed=5000 + i, periphery=bool(rng.integers(2)))
        image = nib.load(str(maps / f"ct_{i:03d}_windows.nii.gz"))
        weights = np.asarray(image.dataobj)
        voxel = np.linalg.inv(image.affine) @ np.array([*phantom.nodule_mm, 1.0])
        index = tuple(int(np.clip(round(v), 0, n - 1)) for v, n in zip(voxel[:3], weights.shape[:3], strict=True))
        values = np.unique(weights[weights > 0])
        at = float(weights[index])
        rows.append({"scan": i, "radius_mm": round(float(phantom.radius_mm), 1), "attention_at_nodule": at,
                     "attention_max": float(values.max()), "rank": int((values > at).sum()) + 1,
                     "windows": int(len(values))})
    return rows


def test_auc(run: Path, tests: Path) -> float:
    """The AUC of the run's best-validation checkpoint on the test phantoms (``medconvnext evaluate``)."""
    out = run / "eval_test"
    subprocess.run([sys.executable, "-m", "medconvnext", "evaluate", str(run), "--data", str(tests), "--split",
                    "test", "--out", str(out), "--n-boot", "0"], check=True, stdout=subprocess.DEVNULL)
    return float(json.loads((out / "summary.json").read_text(encoding="utf-8"))["pooled"]["auc"])


def summarise(run: Path, command: list[str]) -> dict:
    """Best validation AUC, its epoch, the training-loss curve and the plan of a finished run."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    best = max(rows, key=lambda r: (r["val_auc"], -r["val_loss"]))
    plan = json.loads((run / "checkpoint_best.json").read_text(encoding="utf-8"))["preprocessing"]
    return {"best_val_auc": best["val_auc"], "best_epoch": best["epoch"],
            "val_auc": [r["val_auc"] for r in rows], "train_loss": [r["train_loss"] for r in rows],
            "spacing": [round(s, 2) for s in plan["spacing"]], "input_size": plan["input_size"],
            "command": "medconvnext " + " ".join(command[2:])}


if __name__ == "__main__":
    main()
