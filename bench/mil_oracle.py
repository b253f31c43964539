"""The MIL nodule task with the answer given: the same encoder on the same preprocessed tiles, trained with a label
per tile (does it hold the nodule?) instead of one per scan.

Why: ``bench/bench_mil.py``'s MIL run stays at chance. If an encoder told which tiles hold the nodule learns to find
it on the validation scans, the scans, the plan and the encoder carry the finding, and what is missing is the
supervision (a scan label over ~40 tiles, 20 positive scans). Tiles are the no-overlap grid over each scan after
the MIL run's own preprocessing (``uncropped``: body crop, clip and z-score); a tile is positive when the nodule's
centre lies in it (within a voxel). Batches are balanced (8 positive, 8 negative tiles, random flips); validation
scores every tile of the 20 validation scans: tile AUC, and scan AUC by the largest tile probability.

    python bench/bench_mil.py --out /tmp/mil                     # the phantoms and the MIL run (its plan is reused)
    python bench/mil_oracle.py --out /tmp/mil --steps 800 --results bench/results/mil_oracle.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from mil_pooling import grid_tiles  # bench/, beside this script
from sklearn.metrics import roc_auc_score

from medconvnext.data.pipeline import PreprocessingPipeline
from medconvnext.data.preprocessing import PreprocessingPlan
from medconvnext.data.synthetic import chest_ct
from medconvnext.models.factory import create_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="bench_mil.py's --out (scans/ and mil_seed0/)")
    parser.add_argument("--train", type=int, default=40)
    parser.add_argument("--val", type=int, default=20)
    parser.add_argument("--shape", type=int, nargs=3, default=[160, 160, 80])
    parser.add_argument("--spacing", type=float, nargs=3, default=[2.4, 2.4, 3.0])
    parser.add_argument("--model", default="convmixer_128_4")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    plan = json.loads((args.out / "mil_seed0" / "checkpoint_best.json").read_text(encoding="utf-8"))["preprocessing"]
    plan = PreprocessingPlan.from_dict(plan)
    tiles = {i: scan_tiles(args, plan, i) for i in range(args.train + args.val)}
    train = [t for i in range(args.train) for t in tiles[i]]
    positive, negative = [x for x, y in train if y], [x for x, y in train if not y]
    print(f"{len(train)} training tiles, {len(positive)} holding a nodule", flush=True)
    model = create_model(args.model, num_classes=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    start = time.perf_counter()
    for step in range(args.steps):
        model.train()
        x = torch.stack([positive[j] for j in rng.integers(len(positive), size=8)]
                        + [negative[j] for j in rng.integers(len(negative), size=8)])
        for axis in (2, 3, 4):
            if rng.random() < 0.5:
                x = x.flip(axis)
        loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([1] * 8 + [0] * 8))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0:
            print(f"step {step} loss {loss.item():.3f}", flush=True)
    model.eval()
    tile_p, tile_y, scan_p, scan_y = [], [], [], []
    with torch.no_grad():
        for i in range(args.train, args.train + args.val):
            p = model(torch.stack([x for x, _ in tiles[i]])).softmax(1)[:, 1].numpy()
            tile_p += list(p)
            tile_y += [y for _, y in tiles[i]]
            scan_p.append(float(p.max()))
            scan_y.append(int(i % 2 == 0))
    result = {"steps": args.steps, "train_tiles": len(train), "positive_tiles": len(positive),
              "val_tile_auc": round(float(roc_auc_score(tile_y, tile_p)), 3),
              "val_scan_auc_max_tile": round(float(roc_auc_score(scan_y, scan_p)), 3),
              "seconds": round(time.perf_counter() - start), "model": args.model}
    print(result)
    if args.results:
        args.results.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def scan_tiles(args: argparse.Namespace, plan: PreprocessingPlan, i: int) -> list[tuple[torch.Tensor, int]]:
    """(tile (C, R, R, R), holds the nodule) for each tile of the no-overlap grid over scan ``i`` (bench_mil's
    phantoms: even scans have a nodule, drawn from seed 5000 + i)."""
    image = PreprocessingPipeline(plan).deterministic("uncropped").transform(
        {"image": str(args.out / "scans" / f"ct_{i:03d}.nii.gz")})["image"]
    roi = tuple(plan.input_size)
    tiles, starts = grid_tiles(image.as_tensor(), roi)
    centre = None
    if i % 2 == 0:
        draw = np.random.default_rng(5000 + i)
        phantom = chest_ct(tuple(args.shape), tuple(args.spacing), nodule=True, seed=5000 + i,
                           periphery=bool(draw.integers(2)))
        centre = (np.linalg.inv(np.asarray(image.affine)) @ np.array([*phantom.nodule_mm, 1.0]))[:3]
    out = []
    for tile, start in zip(tiles, starts, strict=True):
        holds = centre is not None and all(s - 1 <= c < s + r + 1 for s, r, c in zip(start, roi, centre, strict=True))
        out.append((tile, int(holds)))
    return out


if __name__ == "__main__":
    main()
