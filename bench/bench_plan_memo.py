"""Voxel reads and time of ``data check`` and of the plan on clinical-size CT phantoms, cold and warm memos.

Writes ``--cases`` chest-CT phantoms (:func:`medconvnext.data.synthetic.chest_ct`, int16 HU, 512 x 512 x 280 at
0.73 x 0.73 x 1.25 mm by default) with a ``labels.csv`` into ``--data`` (kept when already there), then, for each
code version (this checkout, and ``--before DIR``: another checkout's source tree, e.g. ``git archive`` of main),
in a fresh cache folder of its own, in child processes:

- ``check cold`` / ``check warm``: ``medconvnext data check --data DIR --config configs/ct.yaml``, twice: the first
  run validates and plans from nothing, the second finds the validation (and, with the foreground memo, the plan's
  foreground scan) remembered;
- ``plan cold`` / ``plan warm``: :func:`~medconvnext.data.fingerprint.plan_preprocessing` of every case, in a second
  fresh cache folder (no validation memo either way).

Each row gives the process's wall time (imports included), the time of the work after the imports, and the voxel
reads it made: calls of the training loader (``LoadCaseImaged.load``: the plan) and of the validator's
``open_image(...).load`` (the gate).

    python bench/bench_plan_memo.py --data /tmp/ct4 [--cases 4] [--before /tmp/before] [--results FILE]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "ct.yaml"
STEPS = (("check", "cold"), ("check", "warm"), ("plan", "cold"), ("plan", "warm"))


def write_cases(root: Path, count: int, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> None:
    """``count`` phantoms (every other one with a nodule) and labels.csv; an existing dataset is kept."""
    from medconvnext.data.synthetic import chest_ct, save_phantom

    if (root / "labels.csv").is_file():
        return
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        label = "nodule" if i % 2 else "clear"
        save_phantom(chest_ct(shape, spacing, nodule=label == "nodule", seed=i), str(root / "img" / f"c{i:02d}.nii.gz"))
        rows.append({"image": f"img/c{i:02d}.nii.gz", "label": label})
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "label"])
        writer.writeheader()
        writer.writerows(rows)


def child(step: str, data: Path) -> dict:
    """Run ``step`` (check: the CLI command; plan: the planner alone) counting voxel reads; seconds after imports."""
    from medconvnext.data import io, validate
    from medconvnext.data.transforms import LoadCaseImaged

    reads = {"plan": 0, "gate": 0}
    load, opener = LoadCaseImaged.load, io.open_image

    def counted_load(self, path):  # noqa: ANN001, ANN202
        reads["plan"] += 1
        return load(self, path)

    def counted_open(path):  # noqa: ANN001, ANN202
        opened = opener(path)

        def read():  # noqa: ANN202
            reads["gate"] += 1
            return opened.load()

        return io.OpenImage(opened.shape, opened.affine, read)

    LoadCaseImaged.load, validate.open_image = counted_load, counted_open
    from medconvnext.cli.main import main
    from medconvnext.config import load_config
    from medconvnext.data.datalist import load_datalist
    from medconvnext.data.fingerprint import compute_fingerprint, plan_preprocessing

    started = time.perf_counter()
    if step == "check":
        sys.argv = ["medconvnext", "data", "check", "--data", str(data), "--config", str(CONFIG)]
        try:
            main()
        except SystemExit as exc:
            if exc.code:
                raise
    else:
        cases = load_datalist(data).cases
        plan_preprocessing(load_config(CONFIG).preprocessing, compute_fingerprint(cases), (32, 32, 32))
    return {"work_s": time.perf_counter() - started, "reads": reads}


def run_version(source: Path, data: Path) -> dict[str, dict]:
    """The four steps for the code in ``source``, each in a child process; a fresh cache folder per pair."""
    out: dict[str, dict] = {}
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    if source != REPO:  # another checkout first on the path (its cli/ linked as medconvnext/cli, as installed)
        env["PYTHONPATH"] = str(source)
    with tempfile.TemporaryDirectory() as check_cache, tempfile.TemporaryDirectory() as plan_cache:
        for step, memo in STEPS:
            env["MEDCONVNEXT_CACHE_DIR"] = check_cache if step == "check" else plan_cache
            started = time.perf_counter()
            done = subprocess.run([sys.executable, __file__, "--child", step, "--data", str(data)], env=env,
                                  check=True, capture_output=True, text=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            out[f"{step} {memo}"] = {"process_s": round(time.perf_counter() - started, 2),
                                     "work_s": round(row["work_s"], 2), "reads": row["reads"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--shape", default="512x512x280")
    parser.add_argument("--spacing", default="0.73x0.73x1.25")
    parser.add_argument("--before", type=Path, help="Another checkout's source tree (medconvnext/ and cli/).")
    parser.add_argument("--results", type=Path)
    parser.add_argument("--child", choices=("check", "plan"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.data)))
        return
    shape = tuple(int(v) for v in args.shape.split("x"))
    spacing = tuple(float(v) for v in args.spacing.split("x"))
    write_cases(args.data, args.cases, shape, spacing)  # type: ignore[arg-type]
    versions = {"after": REPO} | ({"before": args.before} if args.before else {})
    results = {name: run_version(source, args.data) for name, source in versions.items()}
    for name, rows in results.items():
        for step, row in rows.items():
            print(f"{name:6} {step:10} process {row['process_s']:6.2f} s  work {row['work_s']:6.2f} s  "
                  f"reads {row['reads']}")
    if args.results:
        args.results.write_text(json.dumps({"cases": args.cases, "shape": shape, "spacing": spacing,
                                            "results": results}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
