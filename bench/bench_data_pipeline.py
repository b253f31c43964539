"""Data-pipeline bench: epoch time with data.cache none|memory|disk, and the share of a step spent waiting for data.

Imports the 64^3 AdrenalMNIST3D (first --limit training volumes) into a temporary folder, then for each cache mode:
- data-only epochs (iterate the DataLoader, no model): epoch 1 (cold: fills the cache) and epoch 2 (warm);
- a training epoch with the model (forward + backward + AdamW) after warm-up, timing the wait for each batch.

    python bench/bench_data_pipeline.py --limit 64
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_NPZ = REPO.parent / "shared" / "data" / "adrenalmnist3d_64.npz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npz", type=Path, default=DEFAULT_NPZ)
    parser.add_argument("--limit", type=int, default=64, help="training volumes used (of 1188)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--model", default="convnext_atto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-steps", type=int, default=None, help="model steps timed per mode (default: an epoch)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "data_pipeline.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)


    work = Path(tempfile.mkdtemp(prefix="bench_data_"))
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the imported volumes and the disk cache are throwaway


def run(args: argparse.Namespace, work: Path) -> None:
    """Import, bench each cache mode, print and save the results."""
    from medconvnext.data.datalist import load_datalist
    from medconvnext.data.dataset import case_records
    from medconvnext.data.medmnist import import_medmnist
    from medconvnext.data.preprocessing import PreprocessingPlan
    from medconvnext.models import create_model

    imported = import_medmnist(args.npz, work / "data", limit=args.limit)
    datalist = load_datalist(work / "data")
    records = case_records(datalist, [c for c in datalist.cases if c.split == "train"])
    side = imported.shape[0]
    plan = PreprocessingPlan("RAS", (imported.spacing,) * 3, (side, side, side), "zscore")
    model = create_model(args.model, num_classes=len(datalist.classes))
    warm_up(model, args.batch, imported.shape)  # first-call allocator/kernel set-up must not count against "none"
    results = {"cases": len(records), "shape": list(imported.shape), "batch": args.batch, "model": args.model,
               "threads": args.threads, "device": "cpu", "modes": {}}
    for mode in ("none", "memory", "disk"):
        results["modes"][mode] = bench_mode(mode, records, plan, model, args.batch, work / "cache", args.train_steps)
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(f"wrote {args.out}")


def bench_mode(mode: str, records: list[dict], plan, model, batch: int, cache_dir: Path, steps: int | None) -> dict:
    """Cold and warm data-only epochs, then one training epoch with the per-step data wait."""
    from torch.utils.data import DataLoader

    from medconvnext.data.dataset import make_dataset
    from medconvnext.data.pipeline import PreprocessingPipeline

    started = time.perf_counter()
    dataset = make_dataset(records, PreprocessingPipeline(plan).training("light"), mode, cache_dir=cache_dir / mode)
    build = time.perf_counter() - started  # CacheDataset fills the memory cache here
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=0)
    cold = build + data_epoch(loader)
    warm = min(data_epoch(loader) for _ in range(3))  # the CPU is shared: the fastest of 3 is the least disturbed
    wait, step = train_epoch(loader, model, steps)
    return {"build_s": build, "data_epoch_cold_s": cold, "data_epoch_warm_s": warm,
            "train_s": wait + step, "data_wait_s": wait, "data_wait_share": wait / (wait + step)}


def warm_up(model, batch: int, shape: tuple[int, ...]) -> None:
    """One untimed forward/backward pass."""
    model(torch.randn(batch, 1, *shape)).sum().backward()
    model.zero_grad()


def data_epoch(loader) -> float:
    started = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - started


def train_epoch(loader, model, steps: int | None) -> tuple[float, float]:
    """(seconds waiting for batches, seconds computing) over one epoch or its first ``steps`` steps."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    wait = compute = 0.0
    t0 = time.perf_counter()
    for batch in loader:
        t1 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(batch["image"]), batch["label"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        t2 = time.perf_counter()
        wait, compute, t0 = wait + (t1 - t0), compute + (t2 - t1), t2
        steps = None if steps is None else steps - 1
        if steps == 0:
            break
    return wait, compute


def print_table(results: dict) -> None:
    print(f"{results['cases']} cases of {tuple(results['shape'])}, batch {results['batch']}, {results['model']}, "
          f"CPU {results['threads']} thread(s)")
    print(f"{'cache':8} {'cold data epoch':>16} {'warm data epoch':>16} {'train steps':>12} {'data wait':>10}")
    base = results["modes"]["none"]["data_epoch_warm_s"]
    for mode, r in results["modes"].items():
        print(f"{mode:8} {r['data_epoch_cold_s']:15.2f}s {r['data_epoch_warm_s']:15.2f}s "
              f"{r['train_s']:11.2f}s {100 * r['data_wait_share']:9.1f}%   "
              f"(warm speed-up vs none: {base / r['data_epoch_warm_s']:.1f}x)")


if __name__ == "__main__":
    main()
