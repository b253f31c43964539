"""The optimiser and its learning-rate schedule: AdamW over two (or layer-wise) parameter groups, warm-up + cosine.

Used by the loop of ``train`` and ``pretrain`` (:func:`medconvnext.engine.loop.build_loop`, through
:func:`make_optimizer` / :func:`make_schedule`) and ``bench/recipe_search.py`` (through :func:`param_groups` /
:func:`warmup_cosine`).

Why the schedule is a hand-written ``LambdaLR`` and not ``SequentialLR(LinearLR, CosineAnnealingLR)``:

- ``LinearLR`` and ``CosineAnnealingLR`` update the rate recursively from the previous one, so their rates drift from
  the closed form by up to ~1e-12 (relative) within a few hundred steps: a seeded run would no longer reproduce
  the numbers of runs made before (checked against this function, step by step).
- ``resume --epochs N`` recomputes the cosine for the new total from the current step on. A ``LambdaLR`` keeps only
  the step count in its state; ``CosineAnnealingLR`` would restore the old ``T_max`` from the saved state.
- ``train.warmup_epochs = 0`` has no ``LinearLR`` (its start factor would be 1 / 0), and ``CosineAnnealingLR`` rises
  again after ``T_max`` where this schedule stays at 0.
- Training states written before hold a ``LambdaLR`` state; they must keep resuming.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from medconvnext.config import TrainConfig
from medconvnext.engine.checkpoint import unwrap_model
from medconvnext.errors import UserError
from medconvnext.models.layer_ids import LayerIds
from medconvnext.models.mil import MILClassifier, MILLayerIds

ADAMW_BETAS = (0.9, 0.999)  # torch's defaults; FCMAE pretraining uses (0.9, 0.95), as ConvNeXt V2

__all__ = ["ADAMW_BETAS", "layer_decay_groups", "make_optimizer", "make_schedule", "model_layer_ids",
           "optimizer_steps_per_epoch", "param_groups", "warmup_cosine"]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms and layer-scale vectors (1-D parameters), as in timm.

    Returns two groups, ``[decayed (ndim > 1), not decayed (ndim <= 1)]``; frozen parameters are left out.
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from ~0 to the base LR, then cosine decay to 0, stepped per optimizer step.

    The factor at step ``s`` is ``(s + 1) / warmup_steps`` during the warm-up, then
    ``0.5 * (1 + cos(pi * progress))`` with ``progress`` clamped to 1 (the rate stays 0 after ``total_steps``).
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def model_layer_ids(model: nn.Module) -> LayerIds:
    """How ``model`` (unwrapped) numbers its layers for ``train.layer_decay`` (a MIL model: through its encoder).

    Raises:
        UserError: a model that does not number them (ConvMixer, ResNeXt, the MONAI networks), named.
    """
    numbered = model.encoder if isinstance(model, MILClassifier) else model
    if not isinstance(numbered, LayerIds):
        raise UserError(f"train.layer_decay: {'the MIL encoder ' if numbered is not model else ''}"
                        f"{type(numbered).__name__} does not number its layers (no layer_id / num_layers); "
                        "layer decay is for models that do (ConvNeXt); leave it unset")
    return MILLayerIds(model) if numbered is not model else model


def layer_decay_groups(model: nn.Module, weight_decay: float, lr: float, decay: float) -> list[dict[str, Any]]:
    """AdamW groups with lr × decay^(head depth − layer depth), the depths the model gives
    (:class:`~medconvnext.models.layer_ids.LayerIds`): the head at ``lr``, the stem the lowest; no weight decay on
    1-D parameters (biases, norms, layer scales), as in :func:`param_groups`.

    Raises:
        UserError: ``decay`` outside (0, 1], or a model that does not number its layers.
    """
    if not 0.0 < decay <= 1.0:
        raise UserError(f"train.layer_decay must be in (0, 1], got {decay}")
    plain = unwrap_model(model)
    ids = model_layer_ids(plain)
    top = ids.num_layers - 1
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in plain.named_parameters():
        if not param.requires_grad:
            continue
        layer, no_decay = ids.layer_id(name), param.ndim <= 1
        group = groups.setdefault((layer, no_decay), {
            "params": [], "weight_decay": 0.0 if no_decay else weight_decay, "lr": lr * decay ** (top - layer)})
        group["params"].append(param)
    return list(groups.values())


def make_optimizer(model: nn.Module, cfg: TrainConfig, betas: tuple[float, float] = ADAMW_BETAS,
                   layer_decay: bool = True) -> torch.optim.AdamW:
    """AdamW at ``train.lr`` with ``betas``; with ``train.layer_decay`` (unless ``layer_decay`` is off: it is for
    fine-tuning) each layer of the model gets its own decayed rate."""
    if layer_decay and cfg.layer_decay is not None:
        groups = layer_decay_groups(model, cfg.weight_decay, cfg.lr, cfg.layer_decay)
    else:
        groups = param_groups(model, cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas)


def optimizer_steps_per_epoch(batches_per_epoch: int, accumulate: int) -> int:
    """Optimizer steps of one epoch: one per ``accumulate`` batches, the last (partial) group included."""
    return math.ceil(batches_per_epoch / accumulate)


def make_schedule(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, batches_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """:func:`warmup_cosine` over ``train.warmup_epochs`` and ``train.epochs``, in optimizer steps."""
    steps = optimizer_steps_per_epoch(batches_per_epoch, cfg.accumulate)
    return warmup_cosine(optimizer, cfg.warmup_epochs * steps, cfg.epochs * steps)
