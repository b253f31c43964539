"""How nonlinear is each ConvNeXt block at initialisation? A probe for the VesselMNIST3D diagnosis.

For a model at init (and, with ``--run``, a trained run's best checkpoint), forward one batch of training volumes
and report per block: the std of the GELU's input (the first pointwise layer's output), the share of GELU inputs
with |x| > 1 (where GELU bends), and the ratio of the residual branch's std to the stream's. A block whose GELU
inputs have std ~0.16 computes an almost linear function: the paper's trunc-normal(0.02) init is made for 300
epochs on ImageNet, not for 15 epochs on 1,300 masks.

    python bench/gelu_regime_probe.py --data /work/data/vessel28 --model convnext_med_iso_prestem \
        --set init=trunc_normal --set init=torch_default
"""

from __future__ import annotations

import argparse
import json

import torch

from medconvnext.config import load_yaml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a MedMNIST import (labels.csv + images/)")
    parser.add_argument("--model", default="convnext_med_iso_prestem")
    parser.add_argument("--set", dest="variants", action="append", default=[],
                        help="model arg=value, one variant each")
    parser.add_argument("--run", action="append", default=[], help="also probe a run's best checkpoint")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    batch = load_batch(args.data, args.batch)
    rows = {}
    for variant in args.variants or ["init=trunc_normal"]:
        key, value = variant.split("=", 1)
        torch.manual_seed(args.seed)
        from medconvnext.models import create_model

        model = create_model(args.model, **{key: load_yaml(value)}).train()
        rows[variant] = probe(model, batch)
    for run in args.run:
        from medconvnext.engine.checkpoint import load_checkpoint

        model = load_checkpoint(f"{run}/checkpoint_best.safetensors").build_model().train()
        rows[run] = probe(model, batch)
    print(json.dumps(rows, indent=1))


def load_batch(data: str, size: int) -> torch.Tensor:
    from medconvnext.data.datalist import load_datalist
    from medconvnext.data.pipeline import PreprocessingPipeline
    from medconvnext.data.preprocessing import PreprocessingPlan

    datalist = load_datalist(data)
    cases = [c for c in datalist.cases if c.split == "train"][:size]
    pre = PreprocessingPlan("RAS", (64 / 28,) * 3, (32, 32, 32), "minmax")
    pipeline = PreprocessingPipeline(pre).deterministic("cropped")
    return torch.stack([torch.as_tensor(pipeline({"image": c.images[0]})["image"]) for c in cases])


def probe(model: torch.nn.Module, batch: torch.Tensor) -> list[dict]:
    stats: list[dict] = []
    hooks = []
    for index, block in enumerate(model.stages[0]):
        def on_pw1(_module, _inputs, output, index=index):
            stats.append({"block": index, "gelu_input_std": float(output.std()),
                          "share_abs_gt_1": float((output.abs() > 1).float().mean())})

        def on_block(module, inputs, output):
            stream = inputs[0]
            stats[-1]["branch_over_stream"] = float((output - stream).std() / stream.std())

        if hasattr(block, "pwconv1"):
            hooks += [block.pwconv1.register_forward_hook(on_pw1), block.register_forward_hook(on_block)]
    with torch.no_grad():
        model(batch)
    for hook in hooks:
        hook.remove()
    return stats


if __name__ == "__main__":
    main()
