"""What a 32³ input leaves of each ConvNeXt variant: map sizes, padded kernel taps, cost, spread at init.

For every variant of the AdrenalMNIST3D study (docs/benchmarks.md, "ConvNeXt design study") this prints, per
stage, the feature-map size at a 32³ input and the share of the depthwise kernel's taps that land in zero
padding (averaged over the map's positions: a 7³ kernel on an 8³ map reads padding for 58 % of its taps, on a
1³ map for 99.7 %), then parameters, GMACs of one forward, and two facts at initialisation on real training
masks (minmax, as configs/medmnist.yaml plans them): how much the globally pooled features differ between
cases (std over cases, mean over channels; a network that starts with all cases alike learns slowly) and the
gradient norm reaching the stem.

    python bench/convnext_anatomy.py --npz ../shared/data/adrenalmnist3d.npz [--json bench/results/anatomy.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from recipe_search import load_split  # bench/ is on sys.path when run as a script

from medconvnext.models import create_model

VARIANTS: dict[str, dict] = {
    "atto (GroupNorm(1), k7, stem 4)": {},
    "k3": {"kernel_size": 3},
    "k5": {"kernel_size": 5},
    "batchnorm": {"norm": "batchnorm"},
    "layernorm": {"norm": "layernorm"},
    "grn": {"grn": True},
    "stem k7 s4": {"stem_kernel_size": 7},
    "stem 2, k3": {"stem_stride": 2, "kernel_size": 3},
    "batchnorm, stem 2, k3": {"norm": "batchnorm", "stem_stride": 2, "kernel_size": 3},
}


def padded_tap_share(size: int, kernel: int) -> float:
    """Share of a centred ``kernel``³ depthwise kernel's taps that read zero padding on a ``size``³ map."""
    half = kernel // 2
    inside = sum(min(i + half, size - 1) - max(i - half, 0) + 1 for i in range(size)) / (size * kernel)
    return 1.0 - inside**3


def stage_sizes(model: torch.nn.Module, size: int) -> list[int]:
    """Edge length of each stage's feature map for a ``size``³ input."""
    sizes = []
    with torch.no_grad():
        x = model.stem(torch.zeros(2, 1, size, size, size))
        for i in range(len(model.stages)):
            if i > 0:
                x = model.downsample[i - 1](x)
            sizes.append(int(x.shape[-1]))
    return sizes


def at_init(args: dict, x: torch.Tensor, y: torch.Tensor) -> dict:
    torch.manual_seed(0)
    model = create_model("convnext_atto", num_classes=2, in_channels=1, **args)
    model.train()
    pooled = model.forward_features(x).mean(dim=(2, 3, 4))
    F.cross_entropy(model.forward_head(pooled.unsqueeze(-1).unsqueeze(-1).unsqueeze(-1)), y).backward()
    return {
        "pooled_between_case_std": float(pooled.detach().std(dim=0).mean()),
        "stem_grad_norm": float(model.stem[0].weight.grad.norm()),
        "sizes": stage_sizes(model.eval(), x.shape[-1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npz", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    images, labels = load_split(args.npz, 32, "minmax", splits=("train",))
    x, y = images["train"][: args.cases], labels["train"][: args.cases]
    results = {}
    print(f"{'variant':26s} {'maps':>12s} {'padded taps per stage':>26s} {'params M':>8s} {'GMACs':>6s} "
          f"{'pooled std':>10s} {'stem grad':>9s}")
    for name, model_args in VARIANTS.items():
        r = at_init(model_args, x, y)
        kernel = model_args.get("kernel_size", 7)
        r["padded_taps"] = [round(padded_tap_share(s, kernel), 3) for s in r["sizes"]]
        with torch.device("meta"):
            m = create_model("convnext_atto", **model_args)
        r["params_m"] = sum(p.numel() for p in m.parameters()) / 1e6
        r["gmacs"] = _gmacs(model_args)
        results[name] = r
        maps = "/".join(f"{s}" for s in r["sizes"])
        taps = " ".join(f"{t:.0%}" for t in r["padded_taps"])
        print(f"{name:26s} {maps:>12s} {taps:>26s} {r['params_m']:8.2f} {r['gmacs']:6.3f} "
              f"{r['pooled_between_case_std']:10.3f} {r['stem_grad_norm']:9.2e}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


def _gmacs(model_args: dict) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model = create_model("convnext_atto", **model_args).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        # batch 2: GroupNorm with one group per channel refuses a batch of one 1³ map (one value per group)
        model(torch.zeros(2, 1, 32, 32, 32))
    return counter.get_total_flops() / 4e9


if __name__ == "__main__":
    main()
