"""Which checkpoint to keep on a small validation set: the best val-AUC epoch, or the last (EMA) epoch?

For each finished train run given, scores ``checkpoint_best`` and ``checkpoint_last`` on the ``val`` and ``test``
rows of the data the run was trained on (its ``dataset.json`` source; AUC of class 1, accuracy at argmax: medmnist's
conventions) through the normal :class:`~medconvnext.engine.inference.Predictor`, and prints one row per run plus
the mean over runs of each group (the run name without its ``_seedN``). A protocol question, not a model one: with
98 validation cases (22 positive), an AUC difference of 0.03 between epochs is within the noise of the set, so "the
best val epoch" can be an early, lucky one. Read the test columns as the cost of each rule across many runs, never
to choose a single run's checkpoint.

    python bench/selection_rule.py runs/adrenal28/convnext_atto_k3_seed* --json bench/results/selection_rule.json

``--data DIR`` scores every run on DIR instead (a run keeps its own preprocessing, so a 64³ run given the 28³
files would be scored on volumes it never saw the like of: the default avoids that).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from medconvnext.engine.inference import Predictor


def split_rows(data: Path) -> dict[str, tuple[list[Path], np.ndarray]]:
    """``labels.csv`` of a ``data import-medmnist`` folder -> split -> (image paths, 0/1 labels)."""
    rows: dict[str, tuple[list[Path], list[int]]] = {}
    with open(data / "labels.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            paths, labels = rows.setdefault(row["split"], ([], []))
            paths.append(data / row["image"])
            labels.append(int(row["label"]))
    return {split: (paths, np.asarray(labels)) for split, (paths, labels) in rows.items()}


def run_data(run: Path) -> Path:
    """The ``data import-medmnist`` folder a run was trained on: the folder of its ``dataset.json`` source."""
    source = Path(json.loads((run / "dataset.json").read_text(encoding="utf-8"))["source"])
    return source.parent if source.suffix == ".csv" else source


def score(checkpoint: Path, rows: dict, splits: tuple[str, ...] = ("val", "test")) -> dict[str, float]:
    predictor = Predictor.load(checkpoint, device="cpu")
    positive = predictor.class_names.index("1")
    out = {}
    for split in splits:
        paths, labels = rows[split]
        probs = predictor.predict_files(paths)
        out[f"{split}_auc"] = float(roc_auc_score(labels, probs[:, positive]))
        out[f"{split}_acc"] = float(((probs.argmax(1) == positive).astype(int) == labels).mean())
    return out


def finished(run: Path) -> bool:
    """Trained to its last epoch (a running run's ``checkpoint_last`` is only its latest epoch)."""
    import yaml

    metrics, config = run / "metrics.jsonl", run / "config.yaml"
    if not (run / "checkpoint_last.safetensors").is_file() or not metrics.is_file() or not config.is_file():
        return False
    epochs = yaml.safe_load(config.read_text(encoding="utf-8"))["train"]["epochs"]
    lines = [line for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
    return bool(lines) and json.loads(lines[-1])["epoch"] >= epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, default=None, help="score every run on this folder (default: its own)")
    parser.add_argument("--json", type=Path, default=None, help="results file (updated, not replaced)")
    args = parser.parse_args()
    rows: dict[Path, dict] = {}
    results = json.loads(args.json.read_text(encoding="utf-8")) if args.json and args.json.is_file() else {}
    for run in args.runs:
        if not finished(run):
            continue
        data = args.data or run_data(run)
        if results.get(run.name, {}).get("data") != str(data):
            if data not in rows:
                rows[data] = split_rows(data)
            record = {rule: score(run / f"checkpoint_{rule}.safetensors", rows[data]) for rule in ("best", "last")}
            results[run.name] = {**record, "data": str(data)}
        r = results[run.name]
        print(f"{run.name:40s} best: val {r['best']['val_auc']:.3f} test {r['best']['test_auc']:.3f}   "
              f"last: val {r['last']['val_auc']:.3f} test {r['last']['test_auc']:.3f}", flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    groups: dict[str, list[dict]] = {}
    for name, r in results.items():
        groups.setdefault(re.sub(r"_seed\d+$", "", name), []).append(r)
    print(f"\n{'group':32s} {'runs':>4s} {'best: test AUC':>16s} {'last: test AUC':>16s} {'best: ACC':>10s} "
          f"{'last: ACC':>10s}")
    for group, records in sorted(groups.items()):
        cells = [np.mean([r[rule][key] for r in records]) for key in ("test_auc", "test_acc")
                 for rule in ("best", "last")]
        print(f"{group:32s} {len(records):4d} {cells[0]:16.3f} {cells[1]:16.3f} {cells[2]:10.3f} {cells[3]:10.3f}")


if __name__ == "__main__":
    main()
