"""Clinical-size CT: preprocessing, cache, training epoch and predict, ours beside a plain MONAI script, one run.

Generates synthetic chest CTs of clinical size (``medconvnext.data.synthetic.chest_ct``: int16 HU, 512 x 512 x
260-340 voxels, 0.66-0.82 mm in-plane, 1/1.25/1.5 mm slices; class ``nodule`` holds a 6-15 mm sphere in a lung),
then measures, each step in a fresh child process (peak RSS is the child's own):

- ``prep``: per-case preprocessing + cache write. Ours: the run's plan through ``PreprocessingPipeline`` (crop to
  the body, resample, normalise, pad) into the disk cache (float16). MONAI: LoadImaged -> EnsureChannelFirstd ->
  Orientationd -> Spacingd -> ScaleIntensityRanged -> CropForegroundd -> Resized, saved as float32 (what
  PersistentDataset keeps), at the same spacing, window and input size.
- ``train``: one epoch. Ours: ``medconvnext train --epochs 1`` (disk cache warm); MONAI: CacheDataset of the same
  transforms + flips, the same model, AdamW, batch 4.
- ``predict``: one scan, whole volume. Ours: ``medconvnext predict``; MONAI: the same transforms, the checkpoint's
  model, softmax. ``predict_sliding``: ``medconvnext predict --inference sliding`` against MONAI's
  ``sliding_window_inference`` (the classifier's logits broadcast over each window, the usual workaround).

Prints a table of ratios (ours / MONAI, same run) and writes JSON.

    python bench/bench_clinical.py --cases 12 --out /tmp/clinical --results bench/results/clinical_cpu.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--shape", type=int, nargs=2, default=[512, 512], help="in-plane voxels")
    parser.add_argument("--out", type=Path, required=True, help="work folder (scans, runs, caches)")
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-only", action="store_true",
                        help="only ours: `train --epochs 1` peak RSS and epoch time (e.g. 12 against 48 cases)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    data = generate(args.out / f"ct{args.cases}", args.cases, tuple(args.shape))
    # each finished step is saved at once and not measured again when the script is rerun (a step takes minutes)
    path = args.results or args.out / f"clinical_{args.cases}.json"
    results = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    results.update({"cases": args.cases, "threads": args.threads, "cpu": os.cpu_count()})
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    run = args.out / f"run{args.cases}"
    cache = args.out / f"cache{args.cases}"

    def step(name: str, work) -> None:
        if name not in results:
            results[name] = work()
            save(results, path)

    step("train_ours", lambda: train_ours(data, run, cache, env))
    if args.train_only:
        print(json.dumps(results["train_ours"], indent=1))
        return
    plan = json.loads((run / "checkpoint_best.json").read_text(encoding="utf-8"))["preprocessing"]
    (args.out / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    scans = sorted(str(p) for p in (data / "images").glob("*.nii.gz"))
    for side in ("ours", "monai"):
        step(f"prep_{side}", lambda side=side: measure(
            [f"prep_{side}", str(args.out / "plan.json"), str(args.out / f"prep_{side}"), *scans], env))
    step("train_monai", lambda: measure(["train_monai", str(run), str(args.out / "plan.json"), str(data)], env))
    for side in ("ours", "monai"):
        for mode in ("whole", "sliding"):
            step(f"predict_{mode}_{side}", lambda side=side, mode=mode: measure(
                [f"predict_{side}", str(run), scans[0], mode], env))
    print_table(results)


def save(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


def generate(folder: Path, cases: int, in_plane: tuple[int, int]) -> Path:
    """Synthetic scans (kept between runs: a folder already complete is reused)."""
    from medconvnext.data.synthetic import chest_ct, save_phantom

    labels = folder / "labels.csv"
    if labels.is_file():
        return folder
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(cases):
        rng = np.random.default_rng(1000 + i)
        slices, sxy = int(rng.integers(260, 341)), float(rng.uniform(0.66, 0.82))
        sz = float(rng.choice([1.0, 1.25, 1.5]))
        nodule = i % 2 == 0
        phantom = chest_ct((*in_plane, slices), (sxy, sxy, sz), nodule=nodule, seed=i, periphery=i % 4 == 0)
        save_phantom(phantom, str(folder / "images" / f"ct_{i:03d}.nii.gz"))
        rows.append({"image": f"images/ct_{i:03d}.nii.gz", "label": "nodule" if nodule else "clear"})
    with open(labels, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["image", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return folder


def measure(task: list[str], env: dict) -> dict:
    """Run one task in a child process: its JSON result, wall time and peak RSS (MB)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--out", "-", "--child", *task], env=env,
                          stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise SystemExit(f"{task[0]} failed (exit {proc.returncode})")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - start
    return result


def train_ours(data: Path, run: Path, cache: Path, env: dict) -> dict:
    """``medconvnext train --epochs 1`` twice into fresh folders: the first fills the disk cache (its cache build
    time is the warm-up), the second reads it; epoch time and peak RSS of the second."""
    results = {}
    for attempt in ("cold", "warm"):
        target = run if attempt == "warm" else run.with_name(run.name + "_cold")
        if target.exists():
            import shutil

            shutil.rmtree(target)
        cmd = ["/usr/bin/time", "-f", "%M %e", sys.executable, "-m", "medconvnext", "train", "--data", str(data),
               "--config", str(REPO / "configs" / "ct.yaml"), "--epochs", "1", "--out", str(target),
               "--set", f"data.cache_dir={cache}"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        peak_kb, wall = proc.stderr.strip().splitlines()[-1].split()
        metrics = json.loads((target / "metrics.jsonl").read_text(encoding="utf-8").splitlines()[-1])
        results[attempt] = {"wall_s": float(wall), "peak_rss_mb": int(peak_kb) / 1024,
                            "epoch_s": metrics["epoch_time_s"], "volumes_per_s": metrics["train_volumes_per_s"]}
    results["cache_bytes"] = sum(p.stat().st_size for p in cache.rglob("*.pt"))
    return results


def child(task: list[str]) -> None:
    """One measured task (runs in its own process); prints one JSON line."""
    import resource

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    name, rest = task[0], task[1:]
    result = CHILD_TASKS[name](*rest)
    # the task's own process, or (predict_ours) the medconvnext process it ran
    who = resource.RUSAGE_CHILDREN if name == "predict_ours" else resource.RUSAGE_SELF
    result["peak_rss_mb"] = resource.getrusage(who).ru_maxrss / 1024
    print(json.dumps(result))


def prep_ours(plan_json: str, out: str, *scans: str) -> dict:
    from medconvnext.data.cache import DiskCacheDataset
    from medconvnext.data.pipeline import PreprocessingPipeline
    from medconvnext.data.preprocessing import PreprocessingPlan

    pre = PreprocessingPlan.from_dict(json.loads(Path(plan_json).read_text(encoding="utf-8")))
    records = [{"image": s, "label": 0, "case_id": Path(s).name} for s in scans]
    dataset = DiskCacheDataset(records, PreprocessingPipeline(pre).deterministic("cropped"), out)
    times = []
    for index in range(len(records)):
        start = time.perf_counter()
        dataset._build(index)
        times.append(time.perf_counter() - start)
    return {"per_case_s": float(np.mean(times)), "bytes": sum(p.stat().st_size for p in Path(out).rglob("*.pt"))}


def monai_transforms(pre: dict, train: bool = False, resize: bool = True):
    """The plain MONAI chain of the same plan (the issue's order: resample, window, crop, resize; no resize for
    sliding windows)."""
    from monai import transforms as mt

    low, high = pre["clip"]
    steps = [
        mt.LoadImaged("image", image_only=True),
        mt.EnsureChannelFirstd("image"),
        mt.Orientationd("image", axcodes="RAS"),
        mt.Spacingd("image", pixdim=pre["spacing"], mode="bilinear"),
        mt.ScaleIntensityRanged("image", a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True),
        mt.CropForegroundd("image", source_key="image", select_fn=lambda x: x > (-500 - low) / (high - low),
                           allow_smaller=True),
        *([mt.Resized("image", spatial_size=pre["input_size"])] if resize else []),
        mt.EnsureTyped("image", dtype=torch_float32(), track_meta=False),
    ]
    if train:
        steps += [mt.RandFlipd("image", prob=0.5, spatial_axis=axis) for axis in range(3)]
    return mt.Compose(steps)


def torch_float32():
    import torch

    return torch.float32


def prep_monai(plan_json: str, out: str, *scans: str) -> dict:
    import torch

    pre = json.loads(Path(plan_json).read_text(encoding="utf-8"))
    chain = monai_transforms(pre)
    Path(out).mkdir(parents=True, exist_ok=True)
    times = []
    for i, scan in enumerate(scans):
        start = time.perf_counter()
        image = chain({"image": scan})["image"]
        torch.save(torch.as_tensor(image).float(), Path(out) / f"{i}.pt")
        times.append(time.perf_counter() - start)
    return {"per_case_s": float(np.mean(times)), "bytes": sum(p.stat().st_size for p in Path(out).glob("*.pt"))}


def train_monai(run: str, plan_json: str, data: str) -> dict:
    import torch
    from monai.data import CacheDataset, DataLoader

    from medconvnext.engine.checkpoint import load_checkpoint

    pre = json.loads(Path(plan_json).read_text(encoding="utf-8"))
    with open(Path(data) / "labels.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    classes = sorted({r["label"] for r in rows})
    records = [{"image": str(Path(data) / r["image"]), "label": classes.index(r["label"])} for r in rows]
    dataset = CacheDataset(records, monai_transforms(pre, train=True), cache_rate=1.0, num_workers=1, progress=False)
    model = load_checkpoint(Path(run) / "checkpoint_best.safetensors").build_model().train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.05)
    loader = DataLoader(dataset, batch_size=4, shuffle=True)
    start = time.perf_counter()
    for batch in loader:
        # plain tensors: a MetaTensor through the model pays MONAI's metadata hook on every op (many times slower)
        loss = torch.nn.functional.cross_entropy(model(_plain(batch["image"])), _plain(batch["label"]))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    epoch = time.perf_counter() - start
    return {"epoch_s": epoch, "volumes_per_s": len(records) / epoch}


def _plain(value):
    """A MetaTensor as a plain tensor (what a careful MONAI script feeds its model)."""
    import torch

    return value.as_tensor() if hasattr(value, "as_tensor") else torch.as_tensor(value)


def predict_ours(run: str, scan: str, mode: str) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "medconvnext", "predict", scan, "--model", run, "--inference", mode,
                        "--output", str(Path(folder) / "predictions.csv")], check=True, capture_output=True)
        return {"predict_s": time.perf_counter() - start}


def predict_monai(run: str, scan: str, mode: str) -> dict:
    import torch
    from monai.inferers import sliding_window_inference

    from medconvnext.engine.checkpoint import load_checkpoint

    start = time.perf_counter()
    checkpoint = load_checkpoint(Path(run) / "checkpoint_best.safetensors")
    pre = checkpoint.meta["preprocessing"]
    model = checkpoint.build_model()
    chain = monai_transforms(pre, resize=mode == "whole")
    image = _plain(chain({"image": scan})["image"])[None]
    with torch.inference_mode():
        if mode == "whole":
            logits = model(image)
        else:
            def dense(window: torch.Tensor) -> torch.Tensor:  # (N, K) logits spread over the window
                out = model(window)
                return out[:, :, None, None, None].expand(-1, -1, *window.shape[2:]).clone()

            logits = sliding_window_inference(image, pre["input_size"], 4, dense, overlap=0.25).mean(dim=(2, 3, 4))
    prob = torch.softmax(logits, dim=1)[0, 1].item()
    return {"predict_s": time.perf_counter() - start, "probability": prob}


CHILD_TASKS = {"prep_ours": prep_ours, "prep_monai": prep_monai, "train_monai": train_monai,
               "predict_ours": predict_ours, "predict_monai": predict_monai}


def print_table(results: dict) -> None:
    def row(name: str, ours: float, monai: float, unit: str) -> None:
        print(f"{name:34s} {ours:10.2f} {monai:10.2f} {unit:6s} {ours / monai:6.2f}")

    print(f"\n{'step':34s} {'ours':>10s} {'MONAI':>10s} {'unit':6s} {'ratio':>6s}")
    row("preprocess + cache, per case", results["prep_ours"]["per_case_s"], results["prep_monai"]["per_case_s"], "s")
    row("cache bytes, all cases", results["prep_ours"]["bytes"] / 2**20, results["prep_monai"]["bytes"] / 2**20, "MiB")
    row("training epoch (warm cache)", results["train_ours"]["warm"]["epoch_s"], results["train_monai"]["epoch_s"], "s")
    row("training peak RSS", results["train_ours"]["warm"]["peak_rss_mb"], results["train_monai"]["peak_rss_mb"], "MB")
    for mode in ("whole", "sliding"):
        ours, monai = results[f"predict_{mode}_ours"], results[f"predict_{mode}_monai"]
        # each: one process from start to exit (imports included)
        row(f"predict one scan, {mode}", ours["predict_s"], monai["wall_s"], "s")
        row(f"predict peak RSS, {mode}", ours["peak_rss_mb"], monai["peak_rss_mb"], "MB")


if __name__ == "__main__":
    main()
