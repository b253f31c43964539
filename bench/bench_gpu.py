"""GPU benchmark: every number issue 14 asks for, in one process, in a few minutes on one H200.

(One file of ~440 lines on purpose: a GPU session is short and lent by chance, so the whole measurement travels
and runs as one script with no project-internal helpers to carry; each section is a short function below.)

Sections (run in the order of ``SECTIONS``; each row times its own warmed-up steps, so the order does not bias
the rows; a configuration measured twice is measured once):

- ``dwconv``: an isolated depthwise 7³ Conv3d (ConvNeXt-atto stage 1 at 64³: 40 channels, 16³ maps, batch 32),
  forward and forward+backward, contiguous vs channels_last_3d, fp32 vs bf16 (CUDA);
- ``families``: train and inference volumes/s and peak memory of every family at 64³ (batch 32) and 128³
  (batch 8), each model in the layout that ``medconvnext.models.preferred_memory_format`` picks for the device,
  as ratios to the seed-style ConvNeXt-atto port (contiguous, GroupNorm(1), 1×1×1 convs) and to MONAI's DenseNet121;
- ``layouts``: each family's representative in both layouts at 64³ (the evidence for the layout table);
- ``convnext``: ConvNeXt-atto at 64³, layout × norm (eager), then ``torch.compile`` rows (default mode and
  ``reduce-overhead``, i.e. CUDA graphs) for the norms in ``--compile-norms``;
- ``e2e``: the AdrenalMNIST3D 15-epoch protocol (configs/medmnist.yaml, 28³ padded to 32³, convnext_atto)
  through the normal trainer, with the data-wait share of a step from its metrics.jsonl (default loader);
  ``e2e_device`` the same with ``data.augment_on=device``.

Rows that would not finish inside ``--budget-s`` are skipped and say so. On CUDA: bf16 autocast,
``torch.backends.cudnn.benchmark = True``, peak memory from ``torch.cuda.max_memory_allocated`` per row.

    python bench/bench_gpu.py                              # CUDA, the full set (< 4 min on an H200)
    python bench/bench_gpu.py --device cpu --quick         # tiny sizes: checks the whole script on CPU

Prints markdown tables (the ones in docs/benchmarks.md) and writes JSON (default bench/results/gpu_<device>.json).
Run it from outside the repository root when medconvnext is installed from a wheel (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DEFAULT_NPZ = REPO.parent / "shared" / "data" / "adrenalmnist3d.npz"
SEED = "seed_convnext_atto"
DENSENET = "monai_densenet121"
FAMILY_MODELS = [SEED, "convnext_atto", "convmixer_128_4", "resnext_tiny", DENSENET, "monai_resnet18"]
NORMS = ("groupnorm", "layernorm", "batchnorm", "channelnorm")
# in order of what matters most if the budget runs short: the e2e run with the default loader before the
# ConvNeXt variants, the layout evidence and the e2e run with the augmentation on the device
SECTIONS = ("dwconv", "families", "e2e", "convnext", "layouts", "e2e_device")
LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last_3d}


class Budget:
    """Wall-clock budget of the whole benchmark; a row runs only while its estimate still fits."""

    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()

    def allows(self, estimate_s: float) -> bool:
        return self.left() > estimate_s


def build(name: str, norm: str | None = None) -> nn.Module:
    """A registry model by name (``norm`` overrides ConvNeXt's), or the seed-style port ``seed_convnext_atto``."""
    from medconvnext.models import create_model

    if name == SEED:
        sys.path.insert(0, str(BENCH))
        from bench_train_step import SeedConvNeXt

        return SeedConvNeXt(1, 2, (2, 2, 6, 2), (40, 80, 160, 320))
    return create_model(name, num_classes=2, in_channels=1, **({"norm": norm} if norm else {}))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> float:
    """Median seconds of ``iters`` calls of ``step`` after ``warmup`` untimed ones (kernels, autotuning, compile)."""
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def free(device: torch.device) -> None:
    """Drop what the last row left so the next row's peak memory is its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def bench_model(
    name: str, args: argparse.Namespace, size: int, batch: int, layout: str | None = None, norm: str | None = None,
    compile_mode: str | None = None,
) -> dict[str, Any]:
    """Train (forward + backward + AdamW) and inference volumes/s and peak memory of one model.

    ``layout`` None: the seed port runs contiguous, every other model in the layout the library picks for the device.
    """
    from medconvnext.engine.devices import autocast
    from medconvnext.models import preferred_memory_format

    device = args.torch_device
    free(device)
    torch.manual_seed(0)
    model = build(name, norm).to(device)
    if layout is None:
        fmt = torch.contiguous_format if name == SEED else preferred_memory_format(model, device, (size,) * 3)
    else:
        fmt = LAYOUTS[layout]
    key = (name, size, batch, _layout_name(fmt), norm, compile_mode)
    if key in _MEASURED:
        return _MEASURED[key]
    model = model.to(memory_format=fmt)
    if compile_mode:
        torch._dynamo.reset()  # a fresh compile per row: rows would otherwise share (and exhaust) the guard cache
    run = torch.compile(model, mode=compile_mode) if compile_mode else model
    x = torch.randn(batch, 1, size, size, size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 2, (batch,), device=device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    loss_fn = nn.CrossEntropyLoss()
    amp = device.type == "cuda"

    def train_step() -> None:
        optimiser.zero_grad(set_to_none=True)
        with autocast(device, amp):
            loss = loss_fn(run(x), y)
        loss.backward()
        optimiser.step()

    def infer_step() -> None:
        with torch.inference_mode(), autocast(device, amp):
            run(x)

    started = time.perf_counter()
    model.train()
    train_s = timed(train_step, device, args.warmup + (2 if compile_mode else 0), args.iters)
    model.eval()
    infer_s = timed(infer_step, device, args.warmup + (2 if compile_mode else 0), args.iters)
    row = {"model": name, "size": size, "batch": batch, "layout": _layout_name(fmt), "norm": norm,
           "compile": compile_mode or "off", "train_vol_s": batch / train_s, "infer_vol_s": batch / infer_s,
           "peak_mib": peak_mib(device), "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
           "row_s": time.perf_counter() - started}
    _MEASURED[key] = row
    return row  # the next row's free() releases this model


_MEASURED: dict[tuple, dict[str, Any]] = {}


def _layout_name(fmt: torch.memory_format) -> str:
    return "channels_last" if fmt == torch.channels_last_3d else "contiguous"


def guarded(rows: list[dict], label: dict[str, Any], budget: Budget, estimate_s: float, fn: Callable[[], dict]) -> None:
    """Run one row unless the budget is short; an error (e.g. out of memory) becomes the row's note."""
    if not budget.allows(estimate_s):
        rows.append({**label, "skipped": f"budget ({budget.left():.0f} s left, row needs ~{estimate_s:.0f} s)"})
        return
    try:
        rows.append(fn())
    except Exception as exc:  # noqa: BLE001 - a benchmark row reports its failure and the run goes on
        rows.append({**label, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"})
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def section_dwconv(args: argparse.Namespace, budget: Budget) -> list[dict]:
    """Depthwise 7³ Conv3d alone: ConvNeXt-atto stage 1 (40 channels) at the 64³ input (16³ maps), batch 32."""
    from medconvnext.models._dwconv import DepthwiseConv3d

    device = args.torch_device
    channels, maps, batch = (40, 16, 32) if not args.quick else (8, 8, 2)
    dtypes = [torch.float32] + ([torch.bfloat16] if device.type == "cuda" else [])
    rows: list[dict] = []
    for layout, fmt in LAYOUTS.items():
        for dtype in dtypes:
            label = {"layout": layout, "dtype": str(dtype).replace("torch.", ""), "channels": channels,
                     "maps": maps, "batch": batch}

            def row(fmt: torch.memory_format = fmt, dtype: torch.dtype = dtype, label: dict = label) -> dict:
                conv = DepthwiseConv3d(channels, (7, 7, 7)).to(device, dtype).to(memory_format=fmt)
                x = torch.randn(batch, channels, maps, maps, maps, device=device, dtype=dtype)
                x = x.contiguous(memory_format=fmt).requires_grad_(True)

                def forward() -> None:
                    with torch.no_grad():
                        conv(x)

                def forward_backward() -> None:
                    conv(x).sum().backward()

                return {**label, "fwd_ms": 1e3 * timed(forward, device, args.warmup, args.iters),
                        "fwd_bwd_ms": 1e3 * timed(forward_backward, device, args.warmup, args.iters)}

            guarded(rows, label, budget, 2.0, row)
    return rows


def section_families(args: argparse.Namespace, budget: Budget) -> list[dict]:
    rows: list[dict] = []
    for size, batch in args.family_sizes:
        for name in args.models:
            label = {"model": name, "size": size, "batch": batch}
            guarded(rows, label, budget, args.row_estimate_s,
                    lambda name=name, size=size, batch=batch: bench_model(name, args, size, batch))
    return rows


def section_layouts(args: argparse.Namespace, budget: Budget) -> list[dict]:
    """Each family's representative in both layouts, alternated, best of ``--rounds`` (noisy shared machines)."""
    size, batch = args.family_sizes[0]
    best: dict[tuple[str, str], dict] = {}
    for _ in range(args.rounds):
        for name in [m for m in args.models if m != SEED]:
            for layout in LAYOUTS:
                label = {"model": name, "size": size, "batch": batch, "layout": layout}
                rows: list[dict] = []
                guarded(rows, label, budget, args.row_estimate_s,
                        lambda name=name, layout=layout: bench_model(name, args, size, batch, layout=layout))
                old = best.get((name, layout))
                if old is None or rows[0].get("train_vol_s", 0) > old.get("train_vol_s", 0):
                    best[(name, layout)] = rows[0]
    return list(best.values())


def section_convnext(args: argparse.Namespace, budget: Budget) -> list[dict]:
    size, batch = args.family_sizes[0]
    rows: list[dict] = []
    for norm in NORMS:
        for layout in LAYOUTS:
            label = {"model": "convnext_atto", "norm": norm, "layout": layout, "compile": "off"}
            guarded(rows, label, budget, args.row_estimate_s,
                    lambda norm=norm, layout=layout: bench_model("convnext_atto", args, size, batch, layout, norm))
    if args.no_compile:
        return rows
    for mode in ("default", "reduce-overhead"):
        for norm in args.compile_norms:
            label = {"model": "convnext_atto", "norm": norm, "layout": "table", "compile": mode}
            guarded(rows, label, budget, args.compile_estimate_s,
                    lambda norm=norm, mode=mode: bench_model("convnext_atto", args, size, batch, None, norm, mode))
    return rows


def section_e2e(args: argparse.Namespace, budget: Budget, variants: tuple[str, ...] = ("loader",)) -> list[dict]:
    """AdrenalMNIST3D through the normal trainer: import, cache, 15 epochs; wall time and data-wait share."""
    from medconvnext.config import apply_overrides, load_config
    from medconvnext.data.medmnist import import_medmnist
    from medconvnext.engine.feeding import loader_options
    from medconvnext.engine.trainer import train

    if not args.npz.is_file():
        return [{"skipped": f"{args.npz} not found (pass --npz)"}]
    rows: list[dict] = []
    work = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    try:
        started = time.perf_counter()
        import_medmnist(args.npz, work / "data", limit=args.e2e_limit)
        import_s = time.perf_counter() - started
        for augment_on in variants:
            label = {"augment_on": augment_on, "epochs": args.e2e_epochs}
            if not budget.allows(args.e2e_estimate_s):
                rows.append({**label, "skipped": f"budget ({budget.left():.0f} s left)"})
                continue
            config = load_config(REPO / "configs" / "medmnist.yaml")
            apply_overrides(config, {"data.path": str(work / "data"), "train.epochs": args.e2e_epochs,
                                     "train.device": args.device, "data.augment_on": augment_on,
                                     "data.leakage": "off", "model.name": "convnext_atto"})
            started = time.perf_counter()
            try:
                result = train(config, work / f"run_{augment_on}")
            except Exception as exc:  # noqa: BLE001 - reported in the row
                rows.append({**label, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"})
                continue
            wall = time.perf_counter() - started
            history = result.history
            waits = [r["data_wait_share"] for r in history if r.get("data_wait_share") is not None]
            rows.append({**label, "import_s": import_s, "run_s": wall,
                         "epoch_s_mean": statistics.mean(r["epoch_time_s"] for r in history),
                         "train_vol_s_median": statistics.median(r["train_volumes_per_s"] for r in history),
                         "data_wait_share_median": statistics.median(waits) if waits else None,
                         "data_wait_share_max": max(waits) if waits else None,
                         "num_workers": loader_options(config.data, args.torch_device)["num_workers"],
                         "best_val_auc": result.best_metrics.get("val_auc")})
            free(args.torch_device)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def with_ratios(rows: list[dict]) -> list[dict]:
    """Add train/infer speed ratios to the seed port and to DenseNet121 of the same size."""
    for row in rows:
        for base in (SEED, DENSENET):
            ref = next((r for r in rows if r.get("model") == base and r.get("size") == row.get("size")
                        and "train_vol_s" in r), None)
            if ref is not None and "train_vol_s" in row:
                short = "seed" if base == SEED else "densenet"
                row[f"train_x_{short}"] = row["train_vol_s"] / ref["train_vol_s"]
                row[f"infer_x_{short}"] = row["infer_vol_s"] / ref["infer_vol_s"]
    return rows


def markdown(title: str, rows: list[dict], columns: list[str]) -> str:
    """One markdown table; a skipped or failed row shows its note in the first free column."""
    lines = [f"### {title}", "", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        note = row.get("error") or row.get("skipped")
        cells = []
        for col in columns:
            value = row.get(col)
            if value is None and note:
                cells.append(note)
                note = None
            else:
                cells.append(_fmt(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


E2E_COLUMNS = ["augment_on", "epochs", "num_workers", "import_s", "run_s", "epoch_s_mean", "train_vol_s_median",
               "data_wait_share_median", "data_wait_share_max", "best_val_auc"]
TABLES = {
    "dwconv": ["layout", "dtype", "channels", "maps", "batch", "fwd_ms", "fwd_bwd_ms"],
    "families": ["model", "size", "batch", "layout", "train_vol_s", "infer_vol_s", "peak_mib", "train_x_seed",
                 "infer_x_seed", "train_x_densenet", "infer_x_densenet"],
    "layouts": ["model", "size", "batch", "layout", "train_vol_s", "infer_vol_s", "peak_mib"],
    "convnext": ["norm", "layout", "compile", "train_vol_s", "infer_vol_s", "peak_mib", "row_s"],
    "e2e": E2E_COLUMNS,
    "e2e_device": E2E_COLUMNS,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 2 epochs: checks the script, not speed")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--models", nargs="+", default=FAMILY_MODELS)
    parser.add_argument("--compile-norms", nargs="+", default=["groupnorm"], choices=NORMS)
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile rows")
    parser.add_argument("--npz", type=Path, default=DEFAULT_NPZ, help="AdrenalMNIST3D 28³ .npz for the e2e section")
    parser.add_argument("--budget-s", type=float, default=225.0, help="wall-clock budget; later rows are skipped")
    parser.add_argument("--size", type=int, default=None, help="one input size instead of 64 and 128 (--batch too)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--rounds", type=int, default=1, help="layouts section: alternating rounds, best kept")
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results/gpu_<device>.json)")
    args = parser.parse_args(argv)
    args.torch_device = torch.device(args.device)
    quick = args.quick
    args.iters = args.iters or (1 if quick else 5)
    args.warmup = args.warmup or (1 if quick else 3)
    args.family_sizes = [(32, 2)] if quick else [(64, 32), (128, 8)]
    if args.size:
        args.family_sizes = [(args.size, args.batch or args.family_sizes[0][1])]
    if args.threads:
        torch.set_num_threads(args.threads)
    args.e2e_epochs = 2 if quick else 15
    args.e2e_limit = 8 if quick else None
    args.row_estimate_s = 1.0 if quick else 6.0
    args.compile_estimate_s = 60.0 if quick else 45.0
    args.e2e_estimate_s = 30.0 if quick else 50.0
    if quick and args.device == "cpu":
        args.no_compile = True  # compiling on CPU takes minutes; tests/test_gpu_path.py compiles on CPU
    args.out = args.out or BENCH / "results" / f"gpu_{args.torch_device.type}{'_quick' if quick else ''}.json"
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = args.torch_device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes per row: let cuDNN pick its fastest kernels
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    budget = Budget(args.budget_s)
    started = time.perf_counter()
    runners = {"dwconv": section_dwconv, "families": section_families, "layouts": section_layouts,
               "convnext": section_convnext, "e2e": section_e2e,
               "e2e_device": lambda a, b: section_e2e(a, b, ("device",))}
    results: dict[str, list[dict]] = {}
    for section in SECTIONS:
        if section in args.sections:
            results[section] = runners[section](args, budget)
            if section == "families":
                with_ratios(results[section])
            print(markdown(section, results[section], TABLES[section]), flush=True)
    report = {"device": _device_name(device), "torch": torch.__version__, "python": platform.python_version(),
              "platform": platform.platform(), "quick": args.quick, "iters": args.iters, "warmup": args.warmup,
              "total_s": time.perf_counter() - started, "budget_s": args.budget_s, **results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"total {report['total_s']:.0f} s; wrote {args.out}")
    return report


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
