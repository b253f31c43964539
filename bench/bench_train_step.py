"""Training-step time: our ConvNeXt-Tiny (channels_last_3d) vs a straightforward seed-style 3D ConvNeXt.

The seed-style model (defined here) is what a first port of the 2D code looks like: GroupNorm(1) norms,
1x1x1 Conv3d pointwise layers and default (contiguous) memory format. Same depths, widths, kernels and
optimiser. Both run in the same process, alternately, so machine load affects both alike.

    python bench/bench_train_step.py                       # convnext_tiny, 64³, batch 4
    python bench/bench_train_step.py --size 32 --iters 2   # quick check

Prints per-step times and the ratio ours / seed, and writes bench/results/train_step_<device>_<size>_b<batch>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from medconvnext.models import create_model, preferred_memory_format


class SeedBlock(nn.Module):
    """Seed-style block: depthwise 7³ conv -> GroupNorm(1) -> 1x1x1 conv 4x -> GELU -> 1x1x1 conv -> scale."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv3d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.GroupNorm(1, dim, eps=1e-6)
        self.pwconv1 = nn.Conv3d(dim, 4 * dim, 1)
        self.act = nn.GELU()
        self.pwconv2 = nn.Conv3d(4 * dim, dim, 1)
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(self.dwconv(x)))))


class SeedConvNeXt(nn.Module):
    """Seed-style 3D ConvNeXt (stem 4, downsample 2, GroupNorm(1) everywhere)."""

    def __init__(self, in_channels=1, num_classes=2, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv3d(in_channels, dims[0], 4, stride=4), nn.GroupNorm(1, dims[0], eps=1e-6)]
        for i, depth in enumerate(depths):
            if i > 0:
                layers += [nn.GroupNorm(1, dims[i - 1], eps=1e-6), nn.Conv3d(dims[i - 1], dims[i], 2, stride=2)]
            layers += [SeedBlock(dims[i]) for _ in range(depth)]
        self.features = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.features(x).mean(dim=(2, 3, 4))))


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimiser.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="convnext_tiny")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    ours = create_model(args.model, num_classes=2, in_channels=1).to(device)
    fmt = preferred_memory_format(ours, device)
    ours = ours.to(memory_format=fmt)
    depths = tuple(len(stage) for stage in ours.stages)
    dims = tuple(stage[0].dwconv.in_channels for stage in ours.stages)
    seed = SeedConvNeXt(1, 2, depths, dims).to(device)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_seed = sum(p.numel() for p in seed.parameters())

    x = torch.randn(args.batch, 1, args.size, args.size, args.size, device=device)
    y = torch.randint(0, 2, (args.batch,), device=device)
    steps = {"ours": make_step(ours, x.contiguous(memory_format=fmt), y), "seed": make_step(seed, x, y)}
    times: dict[str, list[float]] = {"ours": [], "seed": []}
    for i in range(args.warmup + args.iters):
        for name, step in steps.items():  # alternate so that load changes hit both
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)

    med = {name: statistics.median(t) for name, t in times.items()}
    ratio = med["ours"] / med["seed"]
    # the fastest step is the least disturbed by other processes on a shared machine
    best = {name: min(t) for name, t in times.items()}
    ratio_best = best["ours"] / best["seed"]
    result = {
        "model": args.model,
        "size": args.size,
        "batch": args.batch,
        "iters": args.iters,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "memory_format_ours": str(fmt),
        "params_ours": n_ours,
        "params_seed": n_seed,
        "step_s_ours": times["ours"],
        "step_s_seed": times["seed"],
        "median_s_ours": med["ours"],
        "median_s_seed": med["seed"],
        "ratio_ours_over_seed": ratio,
        "min_s_ours": best["ours"],
        "min_s_seed": best["seed"],
        "ratio_min_ours_over_seed": ratio_best,
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": platform.processor(),
    }
    print(f"{args.model} {args.size}³ batch {args.batch} on {device} ({torch.get_num_threads()} threads)")
    print(f"  ours ({fmt}): {med['ours']:.3f} s/step  {[round(t, 3) for t in times['ours']]}")
    seed_times = [round(t, 3) for t in times["seed"]]
    print(f"  seed (GroupNorm(1), 1x1x1 conv, contiguous): {med['seed']:.3f} s/step  {seed_times}")
    print(f"  ratio ours/seed: {ratio:.3f} (medians), {ratio_best:.3f} (fastest steps)")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"train_step_{device.type}_{args.size}_b{args.batch}.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"  wrote {path}")


if __name__ == "__main__":
    main()
