"""Self-supervised pretraining: FCMAE (masked reconstruction) of a ConvNeXt encoder on unlabelled scans.

What is FCMAE's lives here: the cases (labels ignored), the masked model, the run's records and hooks. The rest is
``train``'s: the plan, cache and augmentation, the loader factory (:mod:`medconvnext.engine.feeding`) and the one
loop (:mod:`medconvnext.engine.loop`, with a :class:`~medconvnext.engine.steps.ReconstructionStep`: the same
optimiser factory, AMP, ``train.accumulate``, ``train.clip_grad_norm`` and training state). The run directory holds
``config.yaml``, ``pretrain.json`` (the masking options and the case ids seen, for the leakage audit),
``metrics.jsonl`` (loss per epoch), ``checkpoint_encoder.safetensors`` (the encoder, loadable by
``train --init``), ``training_state.pt`` and ``reconstructions.png``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medconvnext.config import Config, load_config, save_config
from medconvnext.data.datalist import Case, Datalist, case_id_from_path, is_image_file, load_datalist, resolve_path
from medconvnext.data.dataset import make_dataset
from medconvnext.data.fingerprint import compute_fingerprint, plan_preprocessing
from medconvnext.data.pipeline import PreprocessingPipeline
from medconvnext.data.preprocessing import PreprocessingPlan
from medconvnext.data.validate import require_valid, validate_datalist
from medconvnext.engine import distributed as dist
from medconvnext.engine.checkpoint import atomic_write, save_checkpoint, unwrap_model
from medconvnext.engine.feeding import plain, seed_epoch, split_augmentation, training_loader
from medconvnext.engine.loop import (
    Batches,
    EpochHooks,
    EpochStats,
    Loop,
    LoopRecipe,
    build_loop,
    commit_epoch,
    resume_point,
    run_epochs,
)
from medconvnext.engine.provenance import environment_info
from medconvnext.engine.resume import load_training_state
from medconvnext.engine.setup import schedule_plan, setup_device
from medconvnext.engine.steps import ReconstructionStep
from medconvnext.errors import UserError
from medconvnext.fileio import set_state, start_manifest
from medconvnext.models import apply_memory_format, create_model, model_memory_format
from medconvnext.models.convnext import ConvNeXt3d
from medconvnext.models.fcmae import FCMAE3d, ReconstructionLoss, patchify
from medconvnext.reports.plots import matplotlib_available
from medconvnext.rundir import RunDir, RunLock

ENCODER = "encoder"  # checkpoint_encoder.safetensors
OPTIONS_FILE = RunDir.pretrain_options.name


@dataclass
class PretrainOptions:
    """Masking and decoder settings (ConvNeXt V2's FCMAE; see :mod:`medconvnext.models.fcmae`)."""

    mask_ratio: float = 0.6
    mask_unit: int = 8  # voxels per axis of one masking unit
    decoder_dim: int = 128
    norm_target: bool = False
    include_test: bool = False
    loss: ReconstructionLoss = "mse"  # "bce" for inputs in [0, 1] (masks): see medconvnext.models.fcmae


@dataclass
class PretrainResult:
    run_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)


def pretrain_cases(data: str | Path, include_test: bool = False) -> tuple[list[Case], str]:
    """Cases to pretrain on: any form ``train`` takes (labels ignored; ``test`` rows left out unless
    ``include_test``), or a folder holding the scans themselves."""
    path = Path(data).expanduser()
    if path.is_dir() and not any((path / n).is_file() for n in ("labels.csv", "labels.tsv", "datalist.json")):
        scans = sorted(p for p in path.iterdir() if not p.name.startswith(".") and is_image_file(p))
        if scans:
            return [Case(case_id_from_path(p), (str(resolve_path(p, str(path))),), None) for p in scans], str(path)
    datalist = load_datalist(path, for_training=False)
    return [c for c in datalist.cases if include_test or c.split != "test"], datalist.source


def build_fcmae(config: Config, in_channels: int, options: PretrainOptions) -> FCMAE3d:
    """The configured ConvNeXt wrapped for masked reconstruction; UserError for other families or bad options."""
    try:
        encoder = create_model(config.model.name, num_classes=2, in_channels=in_channels, **config.model.args)
    except (TypeError, ValueError) as exc:
        raise UserError(f"model.args: {exc}") from None
    if not isinstance(encoder, ConvNeXt3d):
        raise UserError(f"--model {config.model.name}: pretrain supports the ConvNeXt family only (masked "
                        "pretraining relies on its sparse-convolution emulation); pick a convnext_* model")
    try:
        return FCMAE3d(encoder, options.mask_unit, options.mask_ratio, options.decoder_dim, options.norm_target,
                       options.loss)
    except ValueError as exc:  # the CLI's names for FCMAE3d's arguments
        raise UserError(f"pretrain: {str(exc).replace('mask_unit', '--patch-size')}") from None


def pretrain(
    config: Config, out: str | Path, options: PretrainOptions, overwrite: bool = False, callbacks: Any = None
) -> PretrainResult:
    """Pretrain ``config.model`` on the scans of ``config.data.path`` into the run directory ``out``."""
    config.validate()  # before anything is written
    with RunLock(out):  # one writer per run
        return _pretrain(config, out, options, overwrite, callbacks)


def _pretrain(config: Config, out: str | Path, options: PretrainOptions, overwrite: bool, callbacks: Any
              ) -> PretrainResult:
    found, source = pretrain_cases(config.data.path, options.include_test)
    datalist, skipped = validate_datalist(_as_datalist(found, source), skip_bad=config.data.skip_bad)
    for problem in skipped:
        warnings.warn(f"skipped bad case: {problem}", stacklevel=2)
    cases = datalist.cases
    in_channels = len(cases[0].images)
    model = build_fcmae(config, in_channels, options)  # refuse a bad model before writing anything
    unit = model.mask_unit
    min_size = [math.lcm(int(m), int(u)) for m, u in zip(model.encoder.min_input_size, unit, strict=True)]
    plan = plan_preprocessing(config.preprocessing, compute_fingerprint(cases), min_size)
    if any(s % u for s, u in zip(plan.input_size, unit, strict=True)):
        raise UserError(f"preprocessing.input_size {list(plan.input_size)} must be a multiple of the mask unit "
                        f"{list(unit)} (--patch-size)")
    if options.loss == "bce" and plan.intensity != "minmax":
        raise UserError(f"--loss bce needs inputs in [0, 1]: preprocessing.intensity resolved to {plan.intensity!r}; "
                        "set preprocessing.intensity=minmax (masks) or use --loss mse")
    run = RunDir(Path(out))
    if os.environ.get("RANK", "0") == "0":  # no process group yet: only rank 0 checks (then creates) the folder
        run.check_new(overwrite, resume_command="medconvnext pretrain --resume")
    device = setup_device(config.train.device)  # under torchrun: joins the process group
    if dist.is_main():
        run.prepare_new(overwrite, kind="pretrain")
        save_config(config, run.config)
        record = {"options": dataclasses.asdict(options), "source": source, "preprocessing": plan.to_dict(),
                  "cases": [c.case_id for c in cases], "images": [list(c.images) for c in cases],
                  "skipped_bad_cases": skipped, "environment": environment_info()}
        atomic_write(run.root / OPTIONS_FILE,
                     lambda tmp: tmp.write_text(json.dumps(record, indent=2), encoding="utf-8"))
    dist.barrier()
    return _fit(config, run, cases, plan, options, device, callbacks, state=None)


def resume_pretrain(run_dir: str | Path, epochs: int | None = None, callbacks: Any = None) -> PretrainResult:
    """Continue a pretraining run from its last completed epoch (``epochs`` may extend it)."""
    with RunLock(run_dir, "--resume"):
        return _resume_pretrain(RunDir(Path(run_dir)), epochs, callbacks)


def _resume_pretrain(run: RunDir, epochs: int | None, callbacks: Any) -> PretrainResult:
    if not (run.root / OPTIONS_FILE).is_file() or not run.config.is_file():
        raise UserError(f"--resume {run.root}: not a pretraining run ({OPTIONS_FILE} or config.yaml missing)")
    config = load_config(run.config)
    record = json.loads((run.root / OPTIONS_FILE).read_text(encoding="utf-8"))
    options = PretrainOptions(**record["options"])
    cases = [Case(case_id, tuple(images), None) for case_id, images in zip(record["cases"], record["images"],
                                                                           strict=True)]
    require_valid(cases, "; the run's data changed since it started")  # a replaced scan is checked again
    device = setup_device(config.train.device)
    if dist.is_main():
        start_manifest(run.root, "pretrain")  # a run from before the manifest records what it writes from now on
        set_state(run.root, "running")
    if epochs is not None:
        config.train.epochs = epochs
        if dist.is_main():
            save_config(config, run.config)
    state = load_training_state(run.training_state()) if run.training_state().is_file() else None
    plan = PreprocessingPlan.from_dict(record["preprocessing"])
    return _fit(config, run, cases, plan, options, device, callbacks, state)


def _as_datalist(cases: list[Case], source: str) -> Datalist:
    if not cases:
        raise UserError(f"--data {source}: no scans to pretrain on")
    return Datalist(cases, [], source)


def _plan(config: Config, run: RunDir, n_scans: int, plan: PreprocessingPlan, options: PretrainOptions,
          fcmae: nn.Module, device: torch.device, steps: int, start: int) -> dict[str, Any]:
    """What the pretraining is about to do: :func:`medconvnext.engine.setup.schedule_plan` of the encoder, the
    scans (``split``, unlabelled) and ``masking``."""
    return {
        **schedule_plan(run, config, plan, fcmae.encoder, device, steps, start),
        "split": {"scans": {"unlabelled": n_scans}},
        "masking": f"FCMAE, {options.mask_ratio:.0%} of {options.mask_unit}³-voxel units masked, {options.loss} "
                   f"loss{', normalised targets' if options.norm_target else ''}",
    }


# ConvNeXt V2's FCMAE recipe: AdamW betas (0.9, 0.95); no EMA, layer decay or compile (fine-tuning options); no
# SyncBatchNorm: each rank normalises over its own visible positions (masked_norm), as train's BatchNorm does on CPU
FCMAE_RECIPE = LoopRecipe(betas=(0.9, 0.95), layer_decay=False, ema=False, compile=False, sync_batchnorm=False)


def _fit(config: Config, run: RunDir, cases: list[Case], plan: PreprocessingPlan, options: PretrainOptions,
         device: torch.device, callbacks: Any, state: dict[str, Any] | None) -> PretrainResult:
    """Build the FCMAE model, its data and the loop (a :class:`ReconstructionStep`), restore ``state`` when
    resuming, and run the remaining epochs."""
    cfg = config.train
    callbacks = callbacks if dist.is_main() else None
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    fcmae = build_fcmae(config, plan.in_channels, options).to(device)
    # the classifier head takes no part in reconstruction: frozen, so DDP does not wait for its gradients
    for module in (fcmae.encoder.head_norm, fcmae.encoder.head):
        module.requires_grad_(False)
    # the encoder trains in the layout `train` measured fastest for its family, device and input size (issue 14)
    fcmae.to(memory_format=apply_memory_format(fcmae.encoder, device, plan.input_size))
    records = [{"image": c.images[0] if len(c.images) == 1 else list(c.images), "label": -1, "case_id": c.case_id}
               for c in cases]
    loader_augment, augment = split_augmentation(config.data, plan.input_size)
    transform = PreprocessingPipeline(plan).training(loader_augment)
    dataset = make_dataset(records, transform, config.data.cache, cache_dir=config.data.cache_dir)
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = training_loader(dataset, cfg.batch_size, config.data, device, cfg.seed, generator)
    step = ReconstructionStep(model_memory_format(fcmae.encoder), augment=augment)
    loop = build_loop(fcmae, cfg, device, step, len(loader), generator, transform, FCMAE_RECIPE)
    start = resume_point(loop, state, run, cfg.epochs)
    if callbacks is not None:
        if hasattr(callbacks, "on_plan"):
            callbacks.on_plan(_plan(config, run, len(cases), plan, options, fcmae, device, len(loader), start))
        callbacks.on_start(cfg.epochs, len(loader))
    meta = {"class_names": [], "preprocessing": plan.to_dict(), "pretrain": dataclasses.asdict(options),
            "environment": environment_info()}
    run_epochs(loop, loader, range(start, cfg.epochs + 1), _PretrainHooks(run, cfg.seed, loader, meta, callbacks))
    if dist.is_main():
        _save_reconstructions(fcmae, records, plan, run.reconstructions, device)
        set_state(run.root, "complete")
    dist.barrier()
    return PretrainResult(run.root, loop.history)


def mask_seed(seed: int, epoch: int) -> int:
    """The seed of the FCMAE masks of ``epoch`` on this rank (each rank draws its own masks)."""
    return (seed * 1_000_003 + epoch * 7_919 + dist.rank() * 104_729) % 2**63


class _PretrainHooks(EpochHooks):
    """Pretraining around the loop: per-epoch seeding of the augmentation and the masks, the encoder checkpoint,
    the training state and the loss per epoch (no validation)."""

    def __init__(self, run: RunDir, seed: int, loader: Batches, meta: dict[str, Any], callbacks: Any) -> None:
        self.run, self.seed, self.loader, self.meta, self.callbacks = run, seed, loader, meta, callbacks

    def on_epoch_start(self, loop: Loop, epoch: int) -> None:
        assert isinstance(loop.step, ReconstructionStep)
        seed_epoch(self.seed, epoch, self.loader, loop.train_transform, loop.step.augment)
        loop.step.masks = torch.Generator().manual_seed(mask_seed(self.seed, epoch))

    def on_step(self, loop: Loop, epoch: int, step: int, loss: float) -> None:
        if self.callbacks is not None:
            self.callbacks.on_step(epoch, step, loss)

    def on_epoch_end(self, loop: Loop, stats: EpochStats) -> None:
        loop.history.append({"epoch": stats.epoch, "loss": stats.loss, "lr": loop.optimizer.param_groups[0]["lr"],
                             "epoch_time_s": round(time.perf_counter() - stats.started, 3)})
        if dist.is_main():  # the encoder checkpoint, then the commit point of the epoch
            fcmae = unwrap_model(loop.model)
            save_checkpoint(self.run.checkpoint(ENCODER), fcmae.encoder,
                            {**self.meta, "epoch": stats.epoch, "metrics": loop.history[-1]})
            commit_epoch(loop, self.run, stats.epoch)
        if self.callbacks is not None:
            self.callbacks.on_epoch_end(loop.history[-1])


@torch.no_grad()
def _save_reconstructions(model: FCMAE3d, records: list[dict], plan: PreprocessingPlan, path: Path,
                          device: torch.device, cases: int = 4) -> None:
    """Middle slices of masked inputs, reconstructions (visible units kept) and targets of a few cases."""
    if not matplotlib_available():
        warnings.warn(f"{path.name} not written: matplotlib is not installed", stacklevel=2)
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    transform = PreprocessingPipeline(plan).deterministic()
    x = torch.stack([plain(transform(dict(r))["image"]) for r in records[:cases]]).to(device)
    model.eval()
    out = model(x, generator=torch.Generator().manual_seed(0))
    size = tuple(x.shape[2:])
    mask = nn.functional.interpolate(out["mask"], size=size, mode="nearest")
    pred = out["pred"].float()
    if model.norm_target:  # back to the input's scale, unit by unit
        units = patchify(x.float(), model.mask_unit)
        pred = pred * (units.var(dim=-1, keepdim=True) + 1e-6).sqrt() + units.mean(dim=-1, keepdim=True)
    pred = model.reconstruct(pred, size)
    shown = [x * (1 - mask), pred * mask + x * (1 - mask), x]
    mid = size[0] // 2
    fig, axes = plt.subplots(len(x), 3, figsize=(7.5, 2.5 * len(x)), squeeze=False)
    for row in range(len(x)):
        for col, (title, volume) in enumerate(zip(("masked input", "reconstruction", "target"), shown, strict=True)):
            ax = axes[row][col]
            ax.imshow(volume[row, 0, mid].float().cpu().numpy(), cmap="gray")
            ax.set_axis_off()
            if row == 0:
                ax.set_title(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80))
    plt.close(fig)
