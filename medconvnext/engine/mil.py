"""The set-up of a multiple-instance run (``train.patches: mil``): its option checks, the arguments of its
:class:`~medconvnext.models.mil.MILClassifier`, and where ``model.init`` weights go in it. Kept apart so that
:mod:`medconvnext.engine.setup` only calls them."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from medconvnext.config import Config, TrainConfig
from medconvnext.errors import UserError
from medconvnext.models import get_entry
from medconvnext.models.mil import MILClassifier, is_mil

__all__ = ["MIL_EMBEDDING_NORM", "MIL_GLOBAL_POOL", "check_mil", "check_mil_input", "mil_arguments", "mil_encoder"]

# A MIL encoder pools each patch by its maximum unless model.args.global_pool says otherwise: with the average, a
# finding of a few voxels is diluted by the patch and MIL stayed at chance; with the maximum it is found
# (bench/mil_pooling.py, docs/benchmarks.md "Multiple-instance learning").
MIL_GLOBAL_POOL = "max"
# ...and standardises each embedding feature over the instances (MILClassifier's embedding_norm): the attention
# head finds the finding on standardised features, not on LayerNorm'd ones (bench/mil_pooling.py).
MIL_EMBEDDING_NORM = True


def check_mil(cfg: TrainConfig) -> None:
    """Field-naming user errors for the ``train.patches=mil`` settings."""
    if cfg.mil_bag_size < 2:  # one patch per bag is patch training; and the embedding norm needs two instances
        raise UserError(f"train.mil_bag_size must be >= 2, got {cfg.mil_bag_size}")
    if not 0.0 <= cfg.mil_foreground_share <= 1.0:
        raise UserError(f"train.mil_foreground_share must be in [0, 1], got {cfg.mil_foreground_share}")
    for name in ("mixup", "cutmix"):  # they mix volumes voxel by voxel; a bag's patches come from different places
        if getattr(cfg, name) > 0:
            raise UserError(f"train.{name} is not supported with train.patches=mil; set train.{name}=0")


def check_mil_input(config: Config) -> None:
    """A MIL run needs a patch size: planned without one, the input would hold the whole field (every patch of
    a bag the same volume). UserError naming ``preprocessing.input_size``."""
    if config.train.patches == "mil" and not config.preprocessing.input_size:
        raise UserError("train.patches=mil: set preprocessing.input_size to the patch size (e.g. [32, 32, 32]); "
                        "the spacing is then the data's median, or preprocessing.spacing")


def mil_arguments(config: Config) -> dict[str, Any]:
    """The :class:`~medconvnext.models.mil.MILClassifier` arguments of a ``train.patches=mil`` run
    (``model.args.mil``, default none); UserError for a model family without an encoder/head split."""
    family = get_entry(config.model.name).family
    if family == "monai":
        raise UserError(f"train.patches=mil: model.name {config.model.name!r} has no forward_features/forward_head "
                        "to embed patches; choose a convnext, convmixer or resnext model")
    mil = config.model.args.get("mil", {})
    if not isinstance(mil, dict):
        raise UserError(f"model.args.mil must be a mapping (e.g. {{attention_dim: 128}}), got {mil!r}")
    known = [p for p in inspect.signature(MILClassifier.__init__).parameters if p not in ("self", "encoder",
                                                                                          "num_classes")]
    for key in mil:
        if key not in known:
            raise UserError(f"model.args.mil.{key}: not a MIL argument (they are: {', '.join(known)})")
    return {"embedding_norm": MIL_EMBEDDING_NORM, **mil}


def mil_encoder(model: nn.Module) -> nn.Module:
    """What ``model.init`` weights load into: a MIL model's encoder (a pretrained or trained classifier's weights
    but its head), else the model itself."""
    return model.encoder if is_mil(model) else model
