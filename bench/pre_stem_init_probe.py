"""How nonlinear a norm-free pre-stem (3³ conv + GELU before the patchify stem) is, at init and after training.

For each init of the pre-stem's conv (``stem_conv_init``: trunc-normal std 0.02, or He), on the validation cases of a
run's data as the model reads them: the std of the conv's outputs, and the share of the GELU's output variance that
no per-channel linear map of its input explains (0: GELU acts as a linear map, as the patchify stem alone would).
With ``--trained RUN ...`` the same for the pre-stem of each run's best checkpoint.

    python bench/pre_stem_init_probe.py RUN [--trained RUN2 RUN3 ...] [--batches 4]

RUN: any run trained on the data to probe (its config, split and preprocessing are used, its weights are not).
"""

from __future__ import annotations

import argparse

import torch

from medconvnext.engine.checkpoint import load_checkpoint
from medconvnext.engine.setup import prepare_resume
from medconvnext.engine.training_data import training_data
from medconvnext.models import create_model


def nonlinear_share(pre: torch.Tensor, post: torch.Tensor) -> float:
    """Share of ``post``'s variance (N, C, D, H, W) left after the best per-channel affine fit on ``pre``."""
    x = pre.transpose(0, 1).reshape(pre.shape[1], -1)
    y = post.transpose(0, 1).reshape(post.shape[1], -1)
    x, y = x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
    slope = (x * y).sum(1, keepdim=True) / (x * x).sum(1, keepdim=True).clamp_min(1e-12)
    return float(((y - slope * x) ** 2).sum() / (y * y).sum().clamp_min(1e-12))


def probe(pre_stem: torch.nn.Module, images: torch.Tensor) -> str:
    with torch.no_grad():
        conv = pre_stem[0](images)
        out = pre_stem[2](pre_stem[1](conv))
    share = nonlinear_share(conv, out)
    return f"conv output std {conv.std().item():.3f}, nonlinear share of the GELU output {share:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--trained", nargs="*", default=[], help="runs whose trained pre-stem to probe too")
    parser.add_argument("--batches", type=int, default=4, help="validation batches to probe on")
    args = parser.parse_args()
    setup = prepare_resume(args.run, None, "cpu")
    data = training_data(setup, torch.Generator().manual_seed(0))
    batches = [b["image"] for _, b in zip(range(args.batches), data.val_loader, strict=False)]
    images = torch.cat(batches)
    print(f"{len(images)} validation cases of {args.run}, shape {tuple(images.shape[1:])}, "
          f"values {images.min().item():.2f}..{images.max().item():.2f}")
    model_args = {**setup.config.model.args, "stem_conv_channels": 16, "stem_conv_norm": "none"}
    for init in ("trunc_normal", "kaiming"):
        torch.manual_seed(0)
        model = create_model(setup.config.model.name, num_classes=2, **{**model_args, "stem_conv_init": init})
        print(f"at init, {init:12s}: {probe(model.pre_stem, images)}")
    for run in args.trained:
        model = load_checkpoint(f"{run}/checkpoint_best.safetensors").build_model().eval()
        print(f"trained  {run}: {probe(model.pre_stem, images)}")


if __name__ == "__main__":
    main()
