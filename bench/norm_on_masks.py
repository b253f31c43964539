"""Why per-voxel LayerNorm struggles on z-scored shape masks: what each ConvNeXt norm does at initialisation.

Feeds real AdrenalMNIST3D training masks (28³ padded to 32³; per-case z-score, or with ``--intensity minmax``
0/1 as configs/medmnist.yaml now does) through a freshly initialised ``convnext_atto`` with ``norm=groupnorm``
and ``norm=layernorm`` (same seed) and prints: the mean magnitude of the stem's normalised output on background
patches (no mask voxel in the 4³ patch) and on foreground patches; how much the globally pooled features differ
between cases; and a few gradient norms.

    python bench/norm_on_masks.py --npz ../shared/data/adrenalmnist3d.npz
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from recipe_search import load_split  # bench/ is on sys.path when run as a script

from medconvnext.models import create_model

PARAMETERS = ("stem.0.weight", "stages.2.0.gamma", "head.weight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npz", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=32)
    parser.add_argument("--intensity", choices=("zscore", "minmax"), default="zscore")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    images, labels = load_split(args.npz, 32, args.intensity, splits=("train",))
    x, y = images["train"][: args.cases], labels["train"][: args.cases]
    mask = x > x.amin(dim=(1, 2, 3, 4), keepdim=True)  # the background is each case's minimum, either way
    results = {norm: measure(norm, x, mask, y) for norm in ("groupnorm", "layernorm")}
    print(f"{'norm':10s} {'|stem| bg':>10s} {'|stem| fg':>10s} {'pooled std':>11s} " +
          " ".join(f"{'grad ' + p:>24s}" for p in PARAMETERS))
    for norm, r in results.items():
        cells = f"{r['stem_background']:10.3f} {r['stem_foreground']:10.3f} {r['pooled_between_case_std']:11.3f}"
        print(f"{norm:10s} {cells} " + " ".join(f"{r['grad'][p]:24.2e}" for p in PARAMETERS))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


def measure(norm: str, x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor) -> dict:
    torch.manual_seed(0)
    model = create_model("convnext_atto", num_classes=2, in_channels=1, norm=norm)
    with torch.no_grad():
        stem = model.stem(x)
        foreground = (F.max_pool3d(mask.float(), 4) > 0).expand_as(stem)
        pooled = model.forward_features(x).mean(dim=(2, 3, 4))
    F.cross_entropy(model(x), y).backward()
    grads = dict(model.named_parameters())
    return {
        "stem_background": float(stem[~foreground].abs().mean()),
        "stem_foreground": float(stem[foreground].abs().mean()),
        "foreground_patch_share": float(foreground[:, 0].float().mean()),
        "pooled_between_case_std": float(pooled.std(dim=0).mean()),
        "grad": {p: float(grads[p].grad.norm()) for p in PARAMETERS},
    }


if __name__ == "__main__":
    main()
