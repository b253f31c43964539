"""Throughput: training and inference volumes/s and peak memory of each backbone, as ratios to baselines.

Every model runs the same work (same input size, batch, AdamW step) in its own child process, so peak memory is
that model's alone (CPU: peak resident set growth; CUDA: torch.cuda.max_memory_allocated). The models run in
rounds (each model once per round, --rounds times) and each keeps its best round, so a noisy moment on a shared
machine hits every model alike. Baselines: the straightforward seed-style ConvNeXt (GroupNorm(1), 1x1x1
convs, contiguous tensors; see bench_train_step.py) of the same widths as convnext_atto, and MONAI's DenseNet121.

    python bench/bench_throughput.py                           # CPU, 32³, batch 8
    python bench/bench_throughput.py --size 64 --batch 4
    python bench/bench_throughput.py --device cuda --amp --size 128 --batch 8 [--compile]   # on a GPU

Writes bench/results/throughput_<device>_<size>_b<batch>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_MODELS = ["seed_convnext_atto", "convnext_atto", "convnext_atto_layernorm", "convmixer_128_4",
                  "resnext_tiny", "monai_densenet121", "monai_resnet18"]
BASELINES = ("seed_convnext_atto", "monai_densenet121")


def build(name: str):
    """A model by bench name: registry names, plus ``seed_convnext_atto`` and ``convnext_atto_layernorm``."""
    from medconvnext.models import create_model

    if name == "seed_convnext_atto":
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_train_step import SeedConvNeXt

        return SeedConvNeXt(1, 2, (2, 2, 6, 2), (40, 80, 160, 320))
    if name == "convnext_atto_layernorm":
        return create_model("convnext_atto", num_classes=2, in_channels=1, norm="layernorm")
    return create_model(name, num_classes=2, in_channels=1)


def measure(args: argparse.Namespace) -> dict:
    """Child process: time training and inference steps of one model; report its peak memory."""
    import torch

    from medconvnext.engine.devices import autocast
    from medconvnext.models import preferred_memory_format

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    torch.manual_seed(0)
    model = build(args.child).to(device)
    fmt = torch.contiguous_format if args.child.startswith("seed_") else preferred_memory_format(model, device)
    model = model.to(memory_format=fmt)
    if args.compile:
        model = torch.compile(model)
    x = torch.randn(args.batch, 1, *(args.size,) * 3, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 2, (args.batch,), device=device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()

    def train_step() -> None:
        optimiser.zero_grad(set_to_none=True)
        with autocast(device, args.amp):
            loss = loss_fn(model(x), y)
        loss.backward()
        optimiser.step()

    def infer_step() -> None:
        with torch.no_grad(), autocast(device, args.amp):
            model(x)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    train_s = _time(train_step, args.iters, device)
    model.eval()
    infer_s = _time(infer_step, args.iters, device)
    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before
    params = sum(p.numel() for p in model.parameters())
    return {"train_step_s": train_s, "infer_step_s": infer_s, "peak_mib": peak_mib, "params_m": params / 1e6,
            "memory_format": str(fmt)}


def _time(step, iters: int, device) -> float:
    import torch

    step()  # warm-up: allocator, kernels, compile
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_child(args: argparse.Namespace, name: str) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--device", args.device, "--size", str(args.size),
           "--batch", str(args.batch), "--iters", str(args.iters), "--threads", str(args.threads)]
    cmd += ["--amp"] * args.amp + ["--compile"] * args.compile
    proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8")
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        return {"error": tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: the default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="mixed precision (CUDA)")
    parser.add_argument("--compile", action="store_true", help="torch.compile each model")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args)))
        return

    best: dict[str, dict] = {}
    for _ in range(args.rounds):
        for name in args.models:
            result = run_child(args, name)
            old = best.get(name)
            faster = "error" not in result and (old is None or "error" in old
                                                or result["train_step_s"] < old["train_step_s"])
            if old is None or faster:
                best[name] = result
    rows = summarise(best, args)
    report = {"size": args.size, "batch": args.batch, "device": args.device, "amp": args.amp,
              "compile": args.compile, "iters": args.iters, "rounds": args.rounds,
              "platform": platform.platform(), "python": platform.python_version(), "models": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"throughput_{args.device.split(':')[0]}_{args.size}_b{args.batch}.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")


def summarise(best: dict[str, dict], args: argparse.Namespace) -> dict[str, dict]:
    """Add volumes/s and ratios to the baselines; print the table."""
    rows = {}
    for name, r in best.items():
        if "error" in r:
            rows[name] = r
            continue
        rows[name] = {**r, "train_vol_s": args.batch / r["train_step_s"], "infer_vol_s": args.batch / r["infer_step_s"]}
    print(f"{args.size}³, batch {args.batch}, {args.device}{' amp' if args.amp else ''}"
          f"{' compile' if args.compile else ''}: volumes/s (x baseline) and peak MiB")
    header = f"{'model':26s} {'params M':>8s} {'train vol/s':>12s} {'infer vol/s':>12s} {'peak MiB':>9s}"
    for base in BASELINES:
        header += f" {'train x ' + base[:10]:>20s}"
    print(header)
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:26s} error: {r['error']}")
            continue
        line = f"{name:26s} {r['params_m']:8.2f} {r['train_vol_s']:12.1f} {r['infer_vol_s']:12.1f} {r['peak_mib']:9.0f}"
        for base in BASELINES:
            ref = rows.get(base, {})
            if "train_vol_s" in ref:
                r[f"train_speed_vs_{base}"] = r["train_vol_s"] / ref["train_vol_s"]
                r[f"infer_speed_vs_{base}"] = r["infer_vol_s"] / ref["infer_vol_s"]
                r[f"peak_mem_vs_{base}"] = r["peak_mib"] / ref["peak_mib"] if ref["peak_mib"] > 0 else None
                line += f" {r[f'train_speed_vs_{base}']:20.2f}"
        print(line)
    return rows


if __name__ == "__main__":
    main()
