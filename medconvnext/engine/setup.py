"""Setting up a training run: checks, datalist, split, plan, run files, device, and the model built once.

:func:`prepare_training` (a new run) and :func:`prepare_resume` (a run continued from its directory) both end in a
:class:`RunSetup`: everything the epoch loop needs to start, decided and written before the first epoch. Every
user error is raised here, before the run directory is written.

The model is built once, right after the global generators are seeded, so its initial weights depend only on
``train.seed`` (on every rank and on resume); the plan reads the model's minimum input size from that same model.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medconvnext.config import Config, TrainConfig, load_config, load_yaml, save_config
from medconvnext.data.datalist import Case, Datalist, load_datalist
from medconvnext.data.dataset import check_disk_cache, check_memory_cache
from medconvnext.data.fingerprint import compute_fingerprint, plan_preprocessing
from medconvnext.data.preprocessing import PreprocessingPlan
from medconvnext.data.splits import Split, train_val_split
from medconvnext.data.validate import require_valid, validate_datalist
from medconvnext.engine import distributed as dist
from medconvnext.engine.devices import resolve_device
from medconvnext.engine.mil import check_mil, check_mil_input, mil_encoder
from medconvnext.engine.model_setup import (
    _seeded_model,
    build_model,
    check_init,
    check_init_2d,
)
from medconvnext.engine.provenance import environment_info
from medconvnext.engine.resume import load_training_state
from medconvnext.engine.warm_start import check_init_compatible
from medconvnext.errors import UserError
from medconvnext.fileio import start_manifest, write_json
from medconvnext.models import get_entry
from medconvnext.rundir import RunDir

__all__ = ["RunSetup", "audit_training_split", "prepare_resume", "prepare_training",
           "run_plan"]



@dataclass
class RunSetup:
    """A run ready for its first (or next) epoch: what it trains on, where it writes, and the model."""

    config: Config
    run: RunDir
    datalist: Datalist
    split: Split
    plan: PreprocessingPlan
    device: torch.device
    model: nn.Module  # seeded with train.seed; not yet on the device
    state: dict[str, Any] | None = None  # the training state to continue from (resume), else None


def prepare_training(
    config: Config, out: str | Path, overwrite: bool, split: Split | None, audit: bool, validated: bool
) -> RunSetup:
    """Check everything, then create the run directory ``out`` with config.yaml, dataset.json and splits.json.

    See :func:`medconvnext.engine.trainer.train` for the arguments.

    Raises:
        UserError: a bad image (named, with the reason) unless ``data.skip_bad``; a bad option; ``out`` not empty
            and not a run, or a run without ``overwrite``; before anything is written.
    """
    if not config.data.path:
        raise UserError("data.path is not set: pass --data DIR")
    check_recipe(config.train)
    check_mil_input(config)
    check_init(config)
    run = RunDir(Path(out))
    if os.environ.get("RANK", "0") == "0":  # (no process group yet) only rank 0 creates the folder: a later rank
        run.check_new(overwrite)  # could see it already; a foreign or existing folder is refused before any work
    datalist = load_datalist(config.data.path)
    # the gate: every image is checked (cached by content) before anything is planned or written
    datalist, skipped = validate_datalist(datalist, skip_bad=config.data.skip_bad)
    if not validated:
        for problem in skipped:
            warnings.warn(f"skipped bad case: {problem}", stacklevel=3)
    try:
        get_entry(config.model.name)  # fail on an unknown model before touching the disk
    except ValueError as exc:
        raise UserError(f"model.name: {exc}") from None
    if split is None:
        split = train_val_split(datalist, config.data.val_fraction, config.train.seed)
    else:
        check_split(split, datalist)
    if audit:
        audit_training_split(config, datalist, split)
    device = setup_device(config.train.device)
    model = _seeded_model(config, datalist)
    plan = training_plan(config, datalist, model.min_input_size, split)
    check_input_fits(plan.input_size, model.min_input_size, config.model.name)
    # every rank caches its training cases and its share of the validation cases
    check_memory_cache(len(split.train) + len(split.val), plan, config.data.cache)
    check_disk_cache(len(split.train) + len(split.val), plan, config.data.cache, config.data.cache_dir)
    check_init_2d(model, config)
    if config.model.init:  # weights that do not fit, or another intensity scheme, are refused before any write
        for note in check_init_compatible(mil_encoder(model), plan, config.model.init):
            if dist.is_main():
                warnings.warn(note, stacklevel=3)
    if dist.is_main():
        run.prepare_new(overwrite)
    dist.barrier()
    if dist.is_main():
        _write_run_files(run, config, datalist, split, plan, skipped)
    return RunSetup(config, run, datalist, split, plan, device, model)


def check_input_fits(input_size: Sequence[int], min_size: Sequence[int], model_name: str) -> None:
    """Before any write: a model input (a fixed ``preprocessing.input_size``, voxels) smaller than the model's
    minimum would fail at the first step, after the run folder was made. Raises UserError naming the field."""
    if any(int(s) < int(m) for s, m in zip(input_size, min_size, strict=True)):
        raise UserError(f"preprocessing.input_size: {list(input_size)} is smaller than {model_name}'s minimum input "
                        f"{list(min_size)} (D, H, W voxels); use at least {list(min_size)}")


def training_plan(config: Config, datalist: Datalist, min_input_size: Sequence[int], split: Split | None = None
                  ) -> PreprocessingPlan:
    """The preprocessing ``train`` plans (:func:`~medconvnext.data.fingerprint.plan_preprocessing`) from the
    training cases of ``split``; default: the split ``train`` draws (the data's split column, or the hold-out of
    ``data.val_fraction`` seeded by ``train.seed``). Raises UserError when no split can be drawn."""
    if split is None:
        split = train_val_split(datalist, config.data.val_fraction, config.train.seed)
    train_ids = set(split.train)
    cases = [c for c in datalist.cases if c.case_id in train_ids]
    return plan_preprocessing(config.preprocessing, compute_fingerprint(cases), tuple(min_input_size),
                              tiled=config.train.patches != "none")


def prepare_resume(run_dir: str | Path, epochs: int | None, device: str | None) -> RunSetup:
    """The run in ``run_dir`` with its own config.yaml (``epochs`` / ``device`` replaced when given, and saved),
    its split, plan and training state (None when it was killed before its first epoch ended).

    Raises:
        UserError: not a run directory, or a scan it uses changed and is now bad.
    """
    run = RunDir(Path(run_dir))
    for needed in (run.config, run.dataset, run.splits):
        if not needed.is_file():
            raise UserError(f"--resume {run.root}: {needed.name} missing (not a run directory); train it again")
    config = load_config(run.config)
    if "ema_bn_batches" not in (_read_yaml(run.config).get("train") or {}):
        config.train.ema_bn_batches = 0  # trained before the option: its EMA keeps averaging the statistics
    planned = config.train.epochs
    if epochs is not None:
        config.train.epochs = epochs
    if device is not None:
        config.train.device = device
    dataset = json.loads(run.dataset.read_text(encoding="utf-8"))
    splits = json.loads(run.splits.read_text(encoding="utf-8"))
    datalist = load_datalist(config.data.path)
    split = Split(splits["train"], splits["val"], splits.get("test", []))
    used = {*split.train, *split.val}  # a scan replaced since the run started is checked again (cache by content)
    require_valid([c for c in datalist.cases if c.case_id in used], "; the run's data changed since it started")
    torch_device = setup_device(config.train.device)
    plan = PreprocessingPlan.from_dict(dataset["preprocessing"])
    state = load_training_state(run.training_state()) if run.training_state().is_file() else None
    done = 0 if state is None else int(state["epoch"])
    # fewer epochs than run, or stopping an unfinished run where it stands: refused before the config is rewritten
    if epochs is not None and state is not None and (epochs < done or epochs == done < planned):
        raise UserError(f"--resume {run.root}: --epochs {epochs}, but the run has trained {done} "
                        f"epoch{'s' * (done != 1)} already; pass --epochs N (more than {done}) to extend it, or "
                        "leave --epochs out to finish it as planned")
    if dist.is_main():
        start_manifest(run.root, "train")  # a run from before the manifest records what it writes from now on
        if epochs is not None or device is not None:
            save_config(config, run.config)
    return RunSetup(config, run, datalist, split, plan, torch_device, _seeded_model(config, datalist), state)


def _read_yaml(path: Path) -> dict[str, Any]:
    """A run's config.yaml as written (load_config fills in the defaults of options added since)."""
    values = load_yaml(path.read_text(encoding="utf-8"))
    return values if isinstance(values, dict) else {}


def check_training_config(config: Config, datalist: Datalist, train_cases: Sequence[Case] | None = None) -> None:
    """Every check of the options that needs no run directory: the recipe, the data options, ``--init`` (that it
    exists, and that its weights fit the model and the intensity planned from ``train_cases``, default all cases),
    the model (name and arguments, by building it) and its 2D weights. For commands that write before the first run
    is set up (``cv``). Raises UserError naming the field."""
    check_recipe(config.train)
    check_mil_input(config)
    check_init(config)
    try:
        get_entry(config.model.name)
    except ValueError as exc:
        raise UserError(f"model.name: {exc}") from None
    model = build_model(config, datalist)
    check_init_2d(model, config)
    if config.preprocessing.input_size:  # a planned size is rounded up to the minimum; a fixed one may be under it
        check_input_fits(config.preprocessing.input_size, model.min_input_size, config.model.name)
    if config.model.init:  # the notes (spacing, size) are warned when each run is set up
        cases = datalist.cases if train_cases is None else train_cases
        plan = plan_preprocessing(config.preprocessing, compute_fingerprint(cases), model.min_input_size)
        check_init_compatible(mil_encoder(model), plan, config.model.init)


def setup_device(name: str) -> torch.device:
    """Resolve the device; under torchrun join the process group and use this rank's GPU."""
    device = resolve_device(name)
    dist.init_from_env(device.type)
    if device.type == "cuda" and dist.env_world_size() > 1:
        device = torch.device("cuda", dist.local_rank())
    return device


def _write_run_files(
    run: RunDir, config: Config, datalist: Datalist, split: Split, plan: PreprocessingPlan, skipped: list[str]
) -> None:
    save_config(config, run.config)
    dataset = {
        "source": datalist.source,
        "classes": datalist.classes,
        "preprocessing": plan.to_dict(),
        "cases": [c.to_dict() for c in datalist.cases],
        "skipped_bad_cases": skipped,
        "environment": environment_info(),
    }
    write_json(run.dataset, dataset)
    write_json(run.splits, split.to_dict())


def run_plan(setup: RunSetup, model: nn.Module, steps_per_epoch: int, start_epoch: int) -> dict[str, Any]:
    """What a run is about to do, as plain JSON values (passed to an optional ``on_plan`` callback).

    Keys: those of :func:`schedule_plan`, plus ``split`` (side -> class -> cases), ``model.args`` and ``config``
    (the resolved config).
    """
    config, split = setup.config, setup.split
    label_of = {c.case_id: c.label for c in setup.datalist.cases}
    sides = {"train": split.train, "val": split.val, "test": split.test}
    counts = {side: {name: sum(label_of.get(i) == name for i in ids) for name in setup.datalist.classes}
              for side, ids in sides.items() if ids}
    plan = schedule_plan(setup.run, config, setup.plan, model, setup.device, steps_per_epoch, start_epoch)
    plan["model"]["args"] = dict(getattr(model, "model_args", {}) or {})
    plan["plan"]["patches"] = config.train.patches  # the input is a patch: validation and predict tile the volume
    return {**plan, "split": counts, "config": dataclasses.asdict(config)}


def schedule_plan(run: RunDir, config: Config, plan: PreprocessingPlan, model: nn.Module, device: torch.device,
                  steps_per_epoch: int, start_epoch: int) -> dict[str, Any]:
    """The part of a plan that training and pretraining share: ``run_dir``; ``plan`` (spacing mm (x, y, z),
    input_size voxels, intensity, orientation); ``model`` (name, parameters); ``device``, ``amp``, ``epochs``,
    ``batch_size``, ``steps_per_epoch``, ``start_epoch`` (> 1 when resumed)."""
    return {
        "run_dir": str(run.root),
        "plan": {"spacing": list(plan.spacing), "input_size": list(plan.input_size), "intensity": plan.intensity,
                 "orientation": plan.orientation, "crop": plan.crop,
                 "field_of_view": list(plan.field_of_view) if plan.field_of_view else None},
        "model": {"name": config.model.name, "parameters": sum(p.numel() for p in model.parameters())},
        "device": str(device),
        "amp": bool(config.train.amp and device.type == "cuda"),
        "epochs": config.train.epochs,
        "batch_size": config.train.batch_size,
        "steps_per_epoch": steps_per_epoch,
        "start_epoch": start_epoch,
    }


def audit_training_split(
    config: Config, datalist: Datalist, split: Split | Sequence[Any], group_by: str | None = "subject"
) -> None:
    """Leakage audit of a split (or of cross-validation folds) as ``data.leakage`` says: warn (once, on the
    first process), error (UserError in every process) or off. Runs before any process group exists."""
    from medconvnext.data.leakage import audit_folds, audit_split, enforce

    mode = config.data.leakage
    if mode == "off" or (mode == "warn" and os.environ.get("RANK", "0") != "0"):
        return
    if isinstance(split, Split):
        report = audit_split(datalist, split, group_by)
    else:
        report = audit_folds(datalist, split, group_by)
    enforce(report, mode, "--strict (data.leakage=error)")


def check_split(split: Split, datalist: Datalist) -> None:
    """An explicit split must name known cases, each on one side, with a training and a validation set."""
    known = {c.case_id for c in datalist.cases}
    sides = {"train": split.train, "val": split.val, "test": split.test}
    for side, ids in sides.items():
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise UserError(f"split.{side}: unknown case id {unknown[0]!r} (not in {datalist.source})")
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = set(sides[a]) & set(sides[b])
        if both:
            raise UserError(f"split: case {sorted(both)[0]!r} is in both {a} and {b}")
    if not split.train or not split.val:
        raise UserError("split: needs at least one training and one validation case")


def check_recipe(cfg: TrainConfig) -> None:
    """The recipe's rules that one field's choice or range cannot say (those are :meth:`Config.validate`'s): the
    environment (tensorboard installed, no sampler under torchrun) and the MIL options together.

    Raises:
        UserError: naming the field.
    """
    if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:  # before the run folder is written
        raise UserError("train.tensorboard: tensorboard is not installed (pip install tensorboard)")
    if cfg.patches == "mil":
        check_mil(cfg)
    if cfg.balance == "sampler" and dist.env_world_size() > 1:
        raise UserError("train.balance=sampler is not supported with torchrun; use train.balance=weights")
