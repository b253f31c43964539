"""Score a run's checkpoint on its validation cases twice: with its saved BatchNorm statistics, and with statistics
recomputed for its weights on fixed training batches (what ``train.ema_bn_batches`` does before each validation).

Why: an EMA's BatchNorm buffers are averages of the trained model's running statistics, measured for other weights
than the averaged ones. docs/benchmarks.md ("EMA and BatchNorm") used this on the runs trained before the fix.

    python bench/ema_bn_probe.py RUN [--which best|last] [--batches 16]

Prints val loss (cross-entropy, nats), AUC and accuracy (argmax) for both; needs the run's data where it was.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from medconvnext.engine.checkpoint import load_checkpoint
from medconvnext.engine.ema import recompute_batchnorm
from medconvnext.engine.setup import prepare_resume
from medconvnext.engine.training_data import training_data


def score(model: torch.nn.Module, loader) -> dict[str, float]:
    """Mean cross-entropy, AUC (two classes) and argmax accuracy of ``model`` over ``loader``."""
    model.eval()
    probs, labels, losses = [], [], []
    with torch.no_grad():
        for batch in loader:
            logits, y = model(batch["image"]), batch["label"].long().view(-1)
            losses.append(torch.nn.functional.cross_entropy(logits, y, reduction="sum").item())
            probs.append(logits.softmax(1).numpy())
            labels.append(y.numpy())
    p, y = np.concatenate(probs), np.concatenate(labels)
    return {"loss": round(sum(losses) / len(y), 3), "auc": round(float(roc_auc_score(y, p[:, 1])), 3),
            "accuracy": round(float((p.argmax(1) == y).mean()), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--which", default="best", choices=["best", "last"])
    parser.add_argument("--batches", type=int, default=16, help="training batches for the recomputed statistics")
    args = parser.parse_args()
    setup = prepare_resume(args.run, None, "cpu")
    setup.config.train.ema, setup.config.train.ema_bn_batches = True, args.batches
    data = training_data(setup, torch.Generator().manual_seed(0))
    model = load_checkpoint(f"{args.run}/checkpoint_{args.which}.safetensors").build_model()
    print("saved statistics     ", score(model, data.val_loader))
    if data.bn_loader is None:
        print("no BatchNorm: nothing to recompute")
        return
    used = recompute_batchnorm(model, (b["image"] for b in data.bn_loader))
    print(f"recomputed ({used} batches)", score(model, data.val_loader))


if __name__ == "__main__":
    main()
