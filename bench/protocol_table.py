"""Compare small-data protocols by their test scores: single runs, seed ensembles, cross-validation fold ensembles.

Each row names a protocol, a glob of ``medconvnext evaluate`` output folders (each holding ``summary.json``) and,
optionally, a glob of the ``metrics.jsonl`` files of the runs the protocol trained. Prints test AUC and accuracy
(mean ± population std over the matched evaluations when there are several, e.g. one per seed) and the training
minutes one result costs (the epoch times of the matched runs, summed, divided by the number of evaluations), and
writes JSON.

    R=runs/adrenal28/convnext_med_iso
    python bench/protocol_table.py --json bench/results/protocols.json \\
      --row "single run" "${R}_seed*/eval_test" "${R}_seed*/metrics.jsonl" \\
      --row "3-seed ensemble" ${R}_ensemble "${R}_seed*/metrics.jsonl" \\
      --row "cv 5-fold ensemble" runs/cv/iso_seed0/eval_test "runs/cv/iso_seed0/fold_*/metrics.jsonl"
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
from pathlib import Path


def pooled(eval_dir: str) -> dict[str, float]:
    """Test AUC and accuracy of one evaluation folder (``summary.json`` written by ``medconvnext evaluate``)."""
    summary = json.loads((Path(eval_dir) / "summary.json").read_text(encoding="utf-8"))["pooled"]
    return {"auc": summary["auc"], "accuracy": summary["accuracy"], "n": summary["n"]}


def training_minutes(metrics_files: list[str]) -> float:
    """Minutes of training in these ``metrics.jsonl`` files (sum of ``epoch_time_s``)."""
    seconds = 0.0
    for path in metrics_files:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.strip():
                seconds += float(json.loads(line).get("epoch_time_s", 0.0))
    return seconds / 60.0


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}"


def row(name: str, eval_glob: str, metrics_glob: str | None) -> dict:
    evals = sorted(glob.glob(eval_glob))
    if not evals:
        raise SystemExit(f"--row {name!r}: no evaluation folder matches {eval_glob}")
    scores = [pooled(e) for e in evals]
    minutes = training_minutes(sorted(glob.glob(metrics_glob))) / len(evals) if metrics_glob else None
    return {"protocol": name, "evaluations": evals, "auc": [s["auc"] for s in scores],
            "accuracy": [s["accuracy"] for s in scores], "n_test": scores[0]["n"],
            "train_minutes_per_result": minutes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--row", nargs="+", action="append", required=True, metavar="NAME EVAL_GLOB [METRICS_GLOB]")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    rows = []
    for spec in args.row:
        if len(spec) not in (2, 3):
            parser.error(f"--row takes NAME EVAL_GLOB [METRICS_GLOB], got {spec}")
        rows.append(row(spec[0], spec[1], spec[2] if len(spec) == 3 else None))
    print("| protocol | results | test AUC | test ACC | training min per result |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        minutes = "" if r["train_minutes_per_result"] is None else f"{r['train_minutes_per_result']:.0f}"
        print(f"| {r['protocol']} | {len(r['auc'])} | {mean_std(r['auc'])} | {mean_std(r['accuracy'])} | {minutes} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
