"""Why MIL stayed at chance on the nodule phantoms: the encoder's global pooling, measured with the encoder frozen.

Each tile of the no-overlap 32³ grid over every phantom (after the MIL run's own plan: body crop, clip, z-score) is
embedded once by a randomly initialised, frozen encoder, pooled over its last feature map by the average (the
families' default) or the maximum (``model.args.global_pool=max``); then only the product's gated-attention MIL head
(:class:`~medconvnext.models.mil.GatedAttention` + a linear layer) is trained on the scan labels, one bag per step.
No weight of the encoder learns, so what the head reaches says whether the pooled features carry the finding at
all: with the average a 6-15 mm nodule is one cell of the 8³ map diluted by 512, with the maximum it is kept. The
max-pooled features are also given to the head LayerNorm'd per instance (ConvNeXt's head norm) instead of
standardised per feature (MILClassifier's ``embedding_norm``).

    python bench/bench_mil.py --out /tmp/mil400 --train 400 --val 100 --runs mil --epochs 1   # phantoms and plan
    python bench/mil_pooling.py --out /tmp/mil400 --run /tmp/mil400/mil_max_seed0 --train 400 --val 100 \\
        --results bench/results/mil_pooling.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from medconvnext.data.pipeline import PreprocessingPipeline
from medconvnext.data.preprocessing import PreprocessingPlan
from medconvnext.data.windows import window_starts
from medconvnext.layers import global_pool
from medconvnext.models import create_model
from medconvnext.models.mil import GatedAttention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="bench_mil.py's --out (its scans/)")
    parser.add_argument("--run", type=Path, required=True, help="a MIL run of bench_mil.py: its plan is used")
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--models", nargs="+", default=["convnext_med_iso"])
    parser.add_argument("--train-counts", type=int, nargs="+", default=None,
                        help="also train the head on only the first N training scans (e.g. 40)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args()
    plan = PreprocessingPlan.from_dict(
        json.loads((args.run / "checkpoint_best.json").read_text(encoding="utf-8"))["preprocessing"])
    labels = np.array([int(i % 2 == 0) for i in range(args.train + args.val)])  # bench_mil: even scans hold one
    bags = [scan_tiles(args.out / "scans" / f"ct_{i:03d}.nii.gz", plan) for i in range(args.train + args.val)]
    results = {}
    for name in args.models:
        start = time.perf_counter()
        embeddings = embed(name, bags)
        print(f"{name}: {sum(len(b) for b in bags)} tiles embedded in {time.perf_counter() - start:.0f} s", flush=True)
        counts = [args.train, *(args.train_counts or [])]
        runs = [(pool, "standardise", count) for pool in embeddings for count in counts]
        runs.append(("max", "layernorm", args.train))
        for pool, norm, count in runs:
            key = f"{name}_{pool}_{norm}_train{count}"
            results[key] = train_head(embeddings[pool], labels, count, args.train, args.epochs, norm)
            print(key, results[key], flush=True)
    if args.results:
        args.results.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


def scan_tiles(path: Path, plan: PreprocessingPlan) -> torch.Tensor:
    """(K, C, R, R, R) tiles of the no-overlap grid over one preprocessed scan (float16, to hold 500 scans)."""
    volume = PreprocessingPipeline(plan).deterministic("uncropped").transform({"image": str(path)})["image"]
    tiles, _ = grid_tiles(volume.as_tensor(), tuple(plan.input_size))
    return torch.stack(tiles).half()


def grid_tiles(volume: torch.Tensor, roi: tuple[int, int, int]) -> tuple[list[torch.Tensor], list[tuple[int, ...]]]:
    """(C, D, H, W) volume -> its (C, *roi) tiles on the no-overlap grid validation reads (padded at the end with the
    volume's minimum up to ``roi``), and their starts in voxels."""
    pad = [max(0, r - s) for r, s in zip(roi, volume.shape[1:], strict=True)]
    volume = torch.nn.functional.pad(volume, [0, pad[2], 0, pad[1], 0, pad[0]], value=float(volume.min()))
    starts = window_starts(tuple(volume.shape[1:]), roi, overlap=0.0)
    return [volume[(slice(None),) + tuple(slice(s, s + r) for s, r in zip(start, roi, strict=True))]
            for start in starts], starts


@torch.no_grad()
def embed(name: str, bags: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """Per pooling, the (K, L) embedding of every bag by one random frozen encoder (eval mode, seed 0)."""
    torch.manual_seed(0)
    encoder = create_model(name, num_classes=2).eval()
    out: dict[str, list[torch.Tensor]] = {"avg": [], "max": []}
    for bag in bags:
        features = torch.cat([encoder.forward_features(bag[i:i + 64].float()) for i in range(0, len(bag), 64)])
        for pool in out:
            out[pool].append(global_pool(features, pool))
    return out


def train_head(features: list[torch.Tensor], labels: np.ndarray, count: int, train: int, epochs: int,
               norm: str) -> dict:
    """Gated attention + linear head on the first ``count`` training bags; the validation AUC (bags ``train:``)
    every 5 epochs. ``norm``: ``standardise`` each feature with the training instances' mean and std (what
    MILClassifier's embedding_norm does at inference), or ``layernorm`` each instance over its features (ConvNeXt's
    head norm)."""
    torch.manual_seed(0)
    if norm == "layernorm":
        bags = [torch.nn.functional.layer_norm(f, f.shape[1:]) for f in features]
    else:
        stacked = torch.cat(features[:count])
        mean, std = stacked.mean(0), stacked.std(0) + 1e-6
        bags = [(f - mean) / std for f in features]
    attention, head = GatedAttention(bags[0].shape[1]), torch.nn.Linear(bags[0].shape[1], 2)
    optimizer = torch.optim.AdamW([*attention.parameters(), *head.parameters()], lr=1e-3, weight_decay=0.05)
    target = torch.as_tensor(labels)

    def margin(h: torch.Tensor) -> torch.Tensor:  # (K, L) -> logit(nodule) - logit(clear) of the bag
        logits = head((attention(h[None])[0][:, None] * h).sum(0))
        return logits[1] - logits[0]

    curve = []
    for epoch in range(1, epochs + 1):
        for i in torch.randperm(count).tolist():
            loss = torch.nn.functional.binary_cross_entropy_with_logits(margin(bags[i]), target[i].float())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if epoch % 5 == 0:
            with torch.no_grad():
                scores = [float(margin(bags[i])) for i in range(train, len(bags))]
            curve.append(round(float(roc_auc_score(labels[train:], scores)), 3))
    return {"val_auc_every_5_epochs": curve, "train_scans": count, "val_scans": len(bags) - train, "norm": norm}


if __name__ == "__main__":
    main()
