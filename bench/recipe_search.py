"""Quick, in-memory recipe search on a MedMNIST 3D ``.npz`` (not the benchmark: see bench_medmnist.py).

Loads the official split into tensors (28³ zero-padded to ``--size``; per-case z-score, or with
``--intensity minmax`` each case to [0, 1], as the toolkit's intensity modes), trains one model with the
trainer's loop (``medconvnext.engine.loop``: AdamW without decay on 1-D parameters, linear warm-up + cosine per
step, optional EMA with warm-up) and flips, and prints val and test AUC / accuracy after every epoch (scored through
``medconvnext.engine.validation.predict_loader``): a cheap way to compare architecture arguments and augmentations
before running the full CLI protocol. It reads test every epoch for the record only; choose on val.

    OMP_NUM_THREADS=1 python bench/recipe_search.py --npz ../shared/data/adrenalmnist3d.npz --name atto \
        --epochs 12 --ema 0 --args '{"stem_kernel_size": 7}' --out runs/recipe_search
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from medconvnext.engine.ema import ModelEma
from medconvnext.engine.loop import EpochHooks, EpochStats, Loop, run_epochs
from medconvnext.engine.optim import param_groups, warmup_cosine
from medconvnext.engine.steps import ClassificationStep
from medconvnext.engine.validation import predict_loader
from medconvnext.models import create_model

CPU = torch.device("cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npz", type=Path, required=True)
    parser.add_argument("--name", required=True, help="name of the JSON written to --out")
    parser.add_argument("--out", type=Path, default=Path("runs/recipe_search"))
    parser.add_argument("--model", default="convnext_atto")
    parser.add_argument("--args", default="{}", help="model arguments as JSON")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--ema", type=float, default=0.999, help="EMA decay; 0 = no EMA")
    parser.add_argument("--shift", type=int, default=0, help="random translation of up to N voxels per axis")
    parser.add_argument("--torch-init", action="store_true", help="PyTorch's default init instead of trunc-normal")
    parser.add_argument("--intensity", choices=("zscore", "minmax"), default="zscore",
                        help="per-case z-score or per-case [0, 1] (what configs/medmnist.yaml plans for masks)")
    parser.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                        help="linear warm-up + cosine per step (the trainer's) or a constant learning rate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    images, labels = load_split(args.npz, args.size, args.intensity)
    model = build(args)
    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr)
    steps = math.ceil(len(images["train"]) / args.batch_size)
    scheduler = (warmup_cosine(optimizer, steps, steps * args.epochs) if args.schedule == "cosine"
                 else torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0))
    ema = ModelEma(model, args.ema) if args.ema > 0 else None
    # the trainer's loop without AMP, accumulation, mixing or DDP: the scaler is a pass-through on the CPU
    generator = torch.Generator().manual_seed(args.seed)
    loop = Loop(model, optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=False), ema,
                ClassificationStep(torch.nn.CrossEntropyLoss(), generator), generator, CPU)
    batches = TensorBatches(images["train"], labels["train"], args.batch_size, args.shift)
    report = Report(images, labels)
    run_epochs(loop, batches, range(1, args.epochs + 1), report)
    history = report.history
    best = max(history, key=lambda r: r["val_auc"])
    print(f"{args.name}: best val AUC {best['val_auc']:.3f} (epoch {best['epoch']}) -> "
          f"test AUC {best['test_auc']:.3f} ACC {best['test_acc']:.3f}")
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "history": history, "best": best}
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2), encoding="utf-8")


class TensorBatches:
    """The training batches of in-memory tensors: a new random order per pass, each batch augmented when it is
    drawn (flips, ``shift``); dicts with ``image`` (B, 1, S, S, S) and ``label`` (B,), the last batch smaller."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, shift: int) -> None:
        self.images, self.labels, self.batch_size, self.shift = images, labels, batch_size, shift

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = torch.randperm(len(self.images))
        for start in range(0, len(self.images), self.batch_size):
            index = order[start:start + self.batch_size]
            yield {"image": augment(self.images[index], self.shift), "label": self.labels[index]}


class Report(EpochHooks):
    """After each epoch: the mean batch loss, val and test AUC / accuracy of the evaluated weights, one line."""

    def __init__(self, images: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> None:
        self.images, self.labels = images, labels
        self.history: list[dict[str, Any]] = []
        self.losses: list[float] = []

    def on_epoch_start(self, loop: Loop, epoch: int) -> None:
        self.losses = []

    def on_step(self, loop: Loop, epoch: int, step: int, loss: float) -> None:
        self.losses.append(loss)

    def on_epoch_end(self, loop: Loop, stats: EpochStats) -> None:
        # the mean over batches (not volumes): what this script has always printed
        record = {"epoch": stats.epoch, "loss": float(np.mean(self.losses)), "s": time.perf_counter() - stats.started}
        for split in ("val", "test"):
            auc, acc = score(loop.eval_model, self.images[split], self.labels[split])
            record.update({f"{split}_auc": auc, f"{split}_acc": acc})
        self.history.append(record)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}), flush=True)


def load_split(npz: Path, size: int, intensity: str = "zscore",
               splits: tuple[str, ...] = ("train", "val", "test")) -> tuple[dict, dict]:
    """Per split: (N, 1, size, size, size) float volumes, zero-padded then normalised per case, and (N,) labels."""
    data = np.load(npz)
    images, labels = {}, {}
    for split in splits:
        x = torch.from_numpy(data[f"{split}_images"]).float()[:, None]
        pad = (size - x.shape[-1]) // 2
        images[split] = normalise(F.pad(x, (pad,) * 6) if pad > 0 else x, intensity)
        labels[split] = torch.from_numpy(data[f"{split}_labels"][:, 0].astype(np.int64))
    return images, labels


def normalise(x: torch.Tensor, intensity: str) -> torch.Tensor:
    """Per case (over each volume of the batch), as the toolkit's ``zscore`` / ``minmax`` intensity modes."""
    dims = tuple(range(1, x.ndim))
    if intensity == "minmax":
        low, high = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
        return (x - low) / (high - low).clamp_min(1e-8)
    return (x - x.mean(dim=dims, keepdim=True)) / x.std(dim=dims, keepdim=True)


def build(args: argparse.Namespace) -> torch.nn.Module:
    model = create_model(args.model, num_classes=2, in_channels=1, **json.loads(args.args))
    if args.torch_init:
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv3d, torch.nn.Linear)):
                module.reset_parameters()
    return model


def augment(batch: torch.Tensor, shift: int) -> torch.Tensor:
    """Random flips on every axis, then (``shift`` > 0) a random translation, per volume."""
    out = batch.clone()
    for i in range(len(out)):
        dims = [axis + 1 for axis in range(3) if torch.rand(1) < 0.5]
        out[i] = out[i].flip(dims) if dims else out[i]
    if shift:
        padded = F.pad(out, (shift,) * 6, mode="replicate")
        n = out.shape[-1]
        for i in range(len(out)):
            d, h, w = torch.randint(0, 2 * shift + 1, (3,)).tolist()
            out[i] = padded[i, :, d:d + n, h:h + n, w:w + n]
    return out


def score(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """AUC of class 1 and accuracy at 0.5 (medmnist's conventions), from the trainer's validation forward."""
    batches = [{"image": images[i:i + 64], "label": labels[i:i + 64], "case_id": list(range(len(images)))[i:i + 64]}
               for i in range(0, len(images), 64)]
    logits = predict_loader(model, batches, CPU, amp=False)["logits"]
    probs = logits.softmax(1)[:, 1].numpy()
    y = labels.numpy()
    return float(roc_auc_score(y, probs)), float(((probs > 0.5) == y).mean())


if __name__ == "__main__":
    main()
