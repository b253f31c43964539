"""Benchmark sliding-window classification: time and peak memory against volume size and sw_batch_size.

Each configuration runs in a fresh subprocess (``--one``) so peak RSS is not polluted by earlier
runs. Inside it: build the model and the volume, reset the kernel's peak-RSS counter
(``/proc/self/clear_refs``; if that is not allowed, the earlier peak stays and the delta can only
be overstated), note the current RSS as the baseline, run inference once (cold) and read
``getrusage(RUSAGE_SELF).ru_maxrss``. The reported memory is that peak minus the baseline: what
inference needs on top of the model and the input volume. The time is a second (warm) run, or the
first when that was long enough (``--warm-max-s``) for first-call costs not to matter.

    python bench/bench_sliding_window.py            # quick set: 128^3 and 256x256x160
    python bench/bench_sliding_window.py --large    # adds 512x512x256 (~600 windows per run)
    python bench/bench_sliding_window.py --sizes 96x96x96 --sw-batch-sizes 1 8 --whole-max-voxels 0

Results: a table on stdout and JSON in bench/results/sliding_window.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

QUICK_SIZES = ["128x128x128", "256x256x160"]
LARGE_SIZES = ["512x512x256"]
RESULTS = Path(__file__).resolve().parent / "results" / "sliding_window.json"
MIB = 1024 * 1024


def _parse_size(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.lower().split("x")]
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"size must be D, or DxHxW, got {text!r}")
    return tuple(parts)  # type: ignore[return-value]


def _rss_bytes() -> int:
    """Current resident set size (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    """Reset the peak-RSS counter to the current RSS (Linux >= 4.0); False when not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def run_one(args: argparse.Namespace) -> dict:
    """One configuration, in this (fresh) process."""
    import torch

    from medconvnext.engine.sliding_window import sliding_window_classify
    from medconvnext.models import create_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model = create_model(args.model, num_classes=2).eval()
    size = args.size
    volume = torch.randn(1, *size, generator=torch.Generator().manual_seed(0))

    def infer():
        if args.mode == "whole":
            with torch.no_grad():
                return torch.softmax(model(volume[None])[0], dim=-1), 1
        result = sliding_window_classify(
            volume, model, args.roi, overlap=args.overlap, sw_batch_size=args.sw_batch_size
        )
        return result.probabilities, len(result.starts)

    reset_ok = _reset_peak_rss()
    baseline = _rss_bytes()
    start = time.perf_counter()
    _, n_windows = infer()
    cold_s = time.perf_counter() - start
    peak = _peak_rss_bytes()
    # a second, warm run for timing, unless the cold one was already long enough to amortise first-call costs
    timed_run, time_s = "cold", cold_s
    if cold_s < args.warm_max_s:
        start = time.perf_counter()
        infer()
        timed_run, time_s = "warm", time.perf_counter() - start
    return {
        "mode": args.mode,
        "size": list(size),
        "roi": list(args.roi),
        "overlap": args.overlap,
        "sw_batch_size": args.sw_batch_size if args.mode == "sw" else None,
        "n_windows": n_windows,
        "time_s": round(time_s, 3),
        "timed_run": timed_run,
        "time_cold_s": round(cold_s, 3),
        "time_per_window_s": round(time_s / n_windows, 4) if args.mode == "sw" else None,
        "peak_rss_delta_mib": round((peak - baseline) / MIB, 1),
        "peak_rss_mib": round(peak / MIB, 1),
        "baseline_rss_mib": round(baseline / MIB, 1),
        "volume_mib": round(volume.numel() * volume.element_size() / MIB, 1),
        "peak_reset": reset_ok,
        "threads": torch.get_num_threads(),
    }


def _child(args: argparse.Namespace, size, mode: str, sw_batch_size: int) -> dict:
    """Run one configuration in a fresh interpreter and parse its JSON line."""
    cmd = [
        sys.executable,
        __file__,
        "--one",
        "--mode",
        mode,
        "--size",
        "x".join(map(str, size)),
        "--roi",
        "x".join(map(str, args.roi)),
        "--overlap",
        str(args.overlap),
        "--sw-batch-size",
        str(sw_batch_size),
        "--model",
        args.model,
        "--threads",
        str(args.threads),
        "--warm-max-s",
        str(args.warm_max_s),
    ]
    env = dict(os.environ)
    if args.malloc_mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
    proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", env=env)
    if proc.returncode != 0:
        # e.g. killed for memory: record it instead of stopping the whole benchmark
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        return {"mode": mode, "size": list(size), "sw_batch_size": sw_batch_size, "error": tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _table(rows: list[dict]) -> str:
    header = f"{'volume':>13} {'mode':>6} {'swb':>4} {'windows':>7} {'time s':>8} {'s/window':>8} {'peak Δ MiB':>10}"
    lines = [header, "-" * len(header)]
    for r in rows:
        size = "x".join(map(str, r["size"]))
        if "error" in r:
            lines.append(f"{size:>13} {r['mode']:>6} {r.get('sw_batch_size') or '-':>4}  failed: {r['error']}")
            continue
        per_window = f"{r['time_per_window_s']:.4f}" if r["time_per_window_s"] is not None else "-"
        lines.append(
            f"{size:>13} {r['mode']:>6} {r['sw_batch_size'] or '-':>4} {r['n_windows']:>7} "
            f"{r['time_s']:>8.2f} {per_window:>8} {r['peak_rss_delta_mib']:>10.1f}"
        )
    return "\n".join(lines)


def _flatness(rows: list[dict], sw_batch_size: int) -> dict | None:
    """Peak-memory spread across volume sizes at one sw_batch_size (the 'bounded by sw_batch_size' claim)."""
    peaks = {
        "x".join(map(str, r["size"])): r["peak_rss_delta_mib"]
        for r in rows
        if r["mode"] == "sw" and r.get("sw_batch_size") == sw_batch_size and "error" not in r
    }
    if len(peaks) < 2:
        return None
    ratio = max(peaks.values()) / max(min(peaks.values()), 1e-9)
    return {
        "sw_batch_size": sw_batch_size,
        "peak_rss_delta_mib": peaks,
        "max_over_min": round(ratio, 3),
        "target": "max < 2048 MiB and max/min <= 1.2",
        "met": max(peaks.values()) < 2048 and ratio <= 1.2,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=_parse_size, help="volume sizes DxHxW (default: quick set)")
    parser.add_argument("--large", action="store_true", help=f"add {', '.join(LARGE_SIZES)} to the default sizes")
    parser.add_argument("--sw-batch-sizes", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--roi", type=_parse_size, default=(64, 64, 64))
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--model", default="convnext_atto")
    parser.add_argument(
        "--whole-max-voxels",
        type=int,
        default=256 * 256 * 160,
        help="also run whole-volume inference for volumes up to this many voxels (0: never)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--warm-max-s",
        type=float,
        default=30.0,
        help="time a second (warm) run when the first took less than this many seconds; else report the first",
    )
    parser.add_argument(
        "--malloc-mmap-threshold",
        type=int,
        default=0,
        help="set glibc's MALLOC_MMAP_THRESHOLD_ in the children (e.g. 131072) for deterministic peak RSS; "
        "0 keeps glibc's dynamic threshold, whose heap reuse adds ~10 MiB of run-to-run noise",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    # internal: run one configuration in this process and print its JSON
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["sw", "whole"], default="sw", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=_parse_size, help=argparse.SUPPRESS)
    parser.add_argument("--sw-batch-size", type=int, default=4, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        print(json.dumps(run_one(args)))
        return

    sizes = args.sizes or [_parse_size(s) for s in QUICK_SIZES + (LARGE_SIZES if args.large else [])]
    rows = []
    for size in sizes:
        for sw_batch_size in args.sw_batch_sizes:
            rows.append(_child(args, size, "sw", sw_batch_size))
            print(_table(rows[-1:]).splitlines()[-1], flush=True)
        if size[0] * size[1] * size[2] <= args.whole_max_voxels:
            rows.append(_child(args, size, "whole", 1))
            print(_table(rows[-1:]).splitlines()[-1], flush=True)

    flat = _flatness(rows, 4)
    print()
    print(_table(rows))
    if flat:
        print(
            f"\nsw_batch_size 4 peak memory across sizes: max/min = {flat['max_over_min']} "
            f"(target <= 1.2, max < 2 GiB: {'met' if flat['met'] else 'NOT met'})"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "model": args.model,
        "roi": list(args.roi),
        "overlap": args.overlap,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "memory": "peak RSS of a fresh process during the first (cold) inference, minus RSS after model + volume",
        "time": "wall clock of a second (warm) inference, or of the first when it took >= warm_max_s (see timed_run)",
        "warm_max_s": args.warm_max_s,
        "malloc_mmap_threshold": args.malloc_mmap_threshold or "glibc default (dynamic)",
        "results": rows,
        "flatness": flat,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
