"""The model a run starts from: built from the config (registry name, ``model.args``, classes, input channels,
MIL wrapper) and its starting weights (``model.init_2d``: inflated 2D weights; ``model.init``: a pretraining run's
encoder or another checkpoint), each checked before any write. Split out of :mod:`medconvnext.engine.setup`, which
orchestrates a run."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import re
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from medconvnext.config import Config
from medconvnext.data.datalist import Datalist
from medconvnext.engine import distributed as dist
from medconvnext.engine.checkpoint import atomic_write
from medconvnext.engine.mil import MIL_GLOBAL_POOL, mil_arguments, mil_encoder
from medconvnext.engine.optim import model_layer_ids
from medconvnext.engine.seeding import seed_everything
from medconvnext.errors import UserError
from medconvnext.models import create_model
from medconvnext.rundir import RunDir


def _seeded_model(config: Config, datalist: Datalist) -> nn.Module:
    """Seed the global generators, then build the model: its initial weights depend only on ``train.seed``
    (and the global streams that dropout, DropPath and the workers draw from start from the seed too)."""
    seed_everything(config.train.seed)
    return build_model(config, datalist)


def build_model(config: Config, datalist: Datalist) -> nn.Module:
    """The configured model (one input channel per image of a case, one output per class);
    ``train.drop_path_rate`` goes to the model when it accepts one.

    Raises:
        UserError: a bad ``model.args`` entry, named.
    """
    num_classes = len(datalist.classes)
    args = {"in_channels": len(datalist.cases[0].images), **config.model.args}
    if config.train.patches == "mil":
        args["mil"] = mil_arguments(config)
        args.setdefault("global_pool", MIL_GLOBAL_POOL)
    elif "mil" in args:
        raise UserError("model.args.mil: MIL arguments need train.patches=mil")
    if config.train.drop_path_rate is not None:
        args["drop_path_rate"] = config.train.drop_path_rate
    try:
        model = _create_configured_model(config.model.name, num_classes, args)
    except TypeError as exc:
        if "drop_path_rate" not in str(exc) or "drop_path_rate" in config.model.args:
            raise UserError(_unknown_argument_message(config.model.name, exc)) from None
        warnings.warn(f"model {config.model.name} has no drop_path_rate; train.drop_path_rate ignored", stacklevel=2)
        args.pop("drop_path_rate")
        model = _create_configured_model(config.model.name, num_classes, args)
    if config.train.layer_decay is not None:
        model_layer_ids(model)  # refused here, before the run writes, not when the optimiser is built
    return model


def _unknown_argument_message(name: str, exc: TypeError) -> str:
    """``model.args.X: not an argument of NAME (its arguments: ...)`` for Python's "unexpected keyword argument"."""
    found = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
    if found is None:
        return f"model.args: {exc}"
    model = create_model(name, num_classes=2)
    model_class = type(getattr(model, "net", model))  # a MONAI network is wrapped: its own arguments
    set_by_us = ("self", "args", "kwargs", "spatial_dims", "out_channels")
    known = [p for p in inspect.signature(model_class.__init__).parameters if p not in set_by_us]
    return f"model.args.{found.group(1)}: not an argument of {name} (its arguments: {', '.join(known)})"


def _create_configured_model(name: str, num_classes: int, args: dict[str, Any]) -> nn.Module:
    """``create_model`` with a bad argument value reported as a user error naming ``model.args``."""
    try:
        return create_model(name, num_classes=num_classes, **args)
    except ValueError as exc:
        raise UserError(f"model.args: {exc}") from exc


def init_weights(model: nn.Module, config: Config, run: RunDir) -> None:
    """A new run's starting weights: inflated 2D weights (``model.init_2d``), then a pretraining run's encoder or
    another checkpoint (``model.init``); what was loaded goes to ``init_2d.json`` / ``init.json`` in the run."""
    if config.model.init_2d:
        _init_from_2d(model, config, run)
    if config.model.init:
        _init_from_3d(model, config, run)


def check_init_2d(model: nn.Module, config: Config) -> None:
    """UserError when ``model.init_2d`` cannot be loaded into ``model`` (tried on a copy: before any write)."""
    if not config.model.init_2d:
        return
    from medconvnext.models.inflate import load_2d_weights_file

    try:
        load_2d_weights_file(copy.deepcopy(model), config.model.init_2d, mode=config.model.init_2d_mode)
    except ValueError as exc:
        raise UserError(f"model.init_2d {config.model.init_2d}: {exc}") from None


def _init_from_2d(model: nn.Module, config: Config, run: RunDir) -> None:
    from medconvnext.models.inflate import load_2d_weights_file

    try:
        report = load_2d_weights_file(model, config.model.init_2d, mode=config.model.init_2d_mode)
    except ValueError as exc:
        raise UserError(f"model.init_2d {config.model.init_2d}: {exc}") from None
    if dist.is_main():
        record = {"path": str(config.model.init_2d), **dataclasses.asdict(report)}
        atomic_write(run.init_2d_report,
                     lambda tmp: tmp.write_text(json.dumps(record, indent=2), encoding="utf-8"))
        for note in report.notes:
            warnings.warn(f"model.init_2d: {note}", stacklevel=2)


def _init_from_3d(model: nn.Module, config: Config, run: RunDir) -> None:
    from medconvnext.engine.warm_start import load_3d_weights

    report = load_3d_weights(mil_encoder(model), config.model.init)
    if dist.is_main():
        atomic_write(run.init_report, lambda tmp: tmp.write_text(json.dumps(report, indent=2), encoding="utf-8"))


def check_init(config: Config) -> None:
    """Fail on a bad ``model.init_2d`` / ``model.init`` before a run directory is created."""
    if config.model.init_2d and not Path(config.model.init_2d).is_file():
        raise UserError(f"model.init_2d: 2D weights file not found: {config.model.init_2d}")
    if config.model.init:
        from medconvnext.engine.warm_start import init_checkpoint

        init_checkpoint(config.model.init)  # UserError when there is no checkpoint there
