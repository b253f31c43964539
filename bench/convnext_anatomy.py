"""What a 32³ input leaves of each ConvNeXt variant: map sizes, padded kernel taps, cost, spread at init.

For every variant of the AdrenalMNIST3D study (docs/benchmarks.md, "ConvNeXt design study") this prints, per
stage, the feature-map size at a 32³ input and the share of the depthwise kernel's taps that land in zero
padding (averaged over the map's positions: a 7³ kernel on an 8³ map reads padding for 58 % of its taps, on a
1³ map for 99.7 %), then parameters, GMACs of one forward, and two facts at initialisation on real training
masks (minmax, as configs/medmnist.yaml plans them): how much the globally pooled features differ between
cases (std over cases, mean over channels; a network that starts with all cases alike learns slowly) and the
gradient norm reaching the stem.

    python bench/convnext_anatomy.py --npz ../shared/data/adrenalmnist3d.npz [--json bench/results/anatomy.json]

``--family iso64`` does the same for the normalisation variants of ``convnext_med_iso_p8`` on the 64³ masks
(``adrenalmnist3d_64.npz``), and every row also gets a size probe: how much of a case's foreground volume (log
voxel count, the strongest single cue of this dataset) a linear model can read from the pooled features at
initialisation (5-fold cross-validated R² of a ridge regression over ``--cases`` training masks). A
normalisation that rescales every volume on its own should leave less of it.

    python bench/convnext_anatomy.py --family iso64 --npz ../shared/data/adrenalmnist3d_64.npz --cases 128 \
        --json bench/results/convnext_anatomy_iso64.json
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

# the isotropic model of the study at 64³ (an 8³ patchify stem, one stage on the 8³ token grid), one norm each
VARIANTS_ISO64: dict[str, dict] = {
    "batchnorm (convnext_med_iso_p8)": {},
    "groupnorm(1)": {"norm": "groupnorm"},
    "layernorm (per voxel)": {"norm": "layernorm"},
    "channelnorm (GN, 1 group/channel)": {"norm": "channelnorm"},
    "batchnorm + grn": {"grn": True},
}
FAMILIES = {"atto": ("convnext_atto", 32, VARIANTS), "iso64": ("convnext_med_iso_p8", 64, VARIANTS_ISO64)}


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


def size_probe_r2(features: torch.Tensor, x: torch.Tensor) -> float:
    """5-fold cross-validated R² of a ridge regression from pooled features (N, C) to log foreground voxels."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import cross_val_score

    target = torch.log((x > 0.5).flatten(1).sum(dim=1).float().clamp_min(1)).numpy()
    return float(cross_val_score(RidgeCV(alphas=(0.1, 1.0, 10.0, 100.0)), features.numpy(), target, cv=5,
                                 scoring="r2").mean())


def at_init(model_name: str, args: dict, x: torch.Tensor, y: torch.Tensor) -> dict:
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=2, in_channels=1, **args)
    model.train()
    pooled = torch.cat([model.forward_features(chunk).mean(dim=(2, 3, 4)) for chunk in x.split(32)])
    head_in = pooled[:32].unsqueeze(-1).unsqueeze(-1).unsqueeze(-1)
    F.cross_entropy(model.forward_head(head_in), y[:32]).backward()
    with torch.no_grad():  # the probe reads the features as the trained model will: BatchNorm in eval mode
        model.eval()
        features = torch.cat([model.forward_features(chunk).mean(dim=(2, 3, 4)) for chunk in x.split(32)])
    return {
        "pooled_between_case_std": float(pooled.detach().std(dim=0).mean()),
        "stem_grad_norm": float(model.stem[0].weight.grad.norm()),
        "size_probe_r2": size_probe_r2(features, x),
        "sizes": stage_sizes(model, x.shape[-1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npz", type=Path, required=True)
    parser.add_argument("--family", choices=sorted(FAMILIES), default="atto")
    parser.add_argument("--cases", type=int, default=32, help="training masks (>= 32; the probe uses all)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    model_name, size, variants = FAMILIES[args.family]
    images, labels = load_split(args.npz, size, "minmax", splits=("train",))
    x, y = images["train"][: args.cases], labels["train"][: args.cases]
    results = {}
    print(f"{'variant':34s} {'maps':>12s} {'padded taps per stage':>26s} {'params M':>8s} {'GMACs':>6s} "
          f"{'pooled std':>10s} {'stem grad':>9s} {'size R²':>7s}")
    for name, model_args in variants.items():
        r = at_init(model_name, model_args, x, y)
        kernel = model_args.get("kernel_size", create_model(model_name).stages[0][0].dwconv.kernel_size[0])
        r["padded_taps"] = [round(padded_tap_share(s, kernel), 3) for s in r["sizes"]]
        with torch.device("meta"):
            m = create_model(model_name, **model_args)
        r["params_m"] = sum(p.numel() for p in m.parameters()) / 1e6
        r["gmacs"] = _gmacs(model_name, model_args, size)
        results[name] = r
        maps = "/".join(f"{s}" for s in r["sizes"])
        taps = " ".join(f"{t:.0%}" for t in r["padded_taps"])
        print(f"{name:34s} {maps:>12s} {taps:>26s} {r['params_m']:8.2f} {r['gmacs']:6.3f} "
              f"{r['pooled_between_case_std']:10.3f} {r['stem_grad_norm']:9.2e} {r['size_probe_r2']:7.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


def _gmacs(model_name: str, model_args: dict, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model = create_model(model_name, **model_args).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        # batch 2: GroupNorm with one group per channel refuses a batch of one 1³ map (one value per group)
        model(torch.zeros(2, 1, size, size, size))
    return counter.get_total_flops() / 4e9


if __name__ == "__main__":
    main()
