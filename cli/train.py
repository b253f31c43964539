"""``medconvnext train``: train one model on a datalist into a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from medconvnext.cli import _options as options
from medconvnext.cli._common import console, resume_hint, run_guarded
from medconvnext.cli._render import TrainingProgress

__all__ = ["TrainingProgress", "train"]


def train(
    data: Path = options.DATA,
    out: Path = typer.Option(None, "--out", help="Run directory to create."),
    model: str = options.MODEL,
    epochs: int = options.EPOCHS,
    batch_size: int = options.BATCH_SIZE,
    lr: float = options.LR,
    seed: int = options.SEED,
    device: str = options.DEVICE,
    config: Path = options.CONFIG,
    set_: list[str] = options.SET,
    overwrite: bool = typer.Option(
        False, "--overwrite/--no-overwrite", metavar="", help="Replace an existing run in --out."),
    resume: Path = typer.Option(
        None, "--resume", help="Continue this run from its last epoch (uses its config.yaml; only --epochs/--device)."
    ),
    tensorboard: bool = options.TENSORBOARD,
    init_2d: Path = typer.Option(
        None, "--init-2d", help="Start a ConvNeXt from 2D ImageNet ConvNeXt weights (.pth/.safetensors, timm or FB)."
    ),
    init: Path = typer.Option(
        None, "--init", help="Start from 3D weights: a `pretrain` run, a train run or a .safetensors checkpoint."
    ),
    strict: bool = options.STRICT,
    tracking: options.Tracking = options.TRACKING,
    tracking_uri: str = options.TRACKING_URI,
    experiment: str = options.EXPERIMENT,
) -> None:
    """Train a 3D classifier and save the best checkpoint (by validation AUC) in --out."""

    def work() -> None:
        from medconvnext.engine.trainer import resume as resume_training
        from medconvnext.engine.trainer import train as run_training
        from medconvnext.errors import UserError

        if resume is not None:
            # the run's own config.yaml decides everything else, so a resumed run is the run that was started
            rejected = {"--data": data, "--out": out, "--model": model, "--batch-size": batch_size, "--lr": lr,
                        "--seed": seed, "--config": config, "--set": set_ or None, "--tensorboard": tensorboard,
                        "--overwrite": overwrite or None, "--init-2d": init_2d, "--init": init, "--strict": strict}
            given = [name for name, value in rejected.items() if value is not None]
            if given:
                raise UserError(f"--resume uses the run's config.yaml; drop {', '.join(given)} (only --epochs and "
                                "--device may change)")
            with tracker(tracking, tracking_uri, experiment) as track, TrainingProgress() as progress:
                result = resume_training(resume, epochs=epochs, device=device, callbacks=group(progress, track))
        else:
            if out is None:
                raise UserError("--out is required (or --resume RUN_DIR to continue a run)")
            cfg = options.build_config(
                config, set_, data=data, model=model, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                device=device, strict=strict, tensorboard=tensorboard,
                **{"model.init_2d": str(init_2d) if init_2d is not None else None,
                   "model.init": str(init) if init is not None else None},
            )
            with tracker(tracking, tracking_uri, experiment) as track, TrainingProgress() as progress:
                result = run_training(cfg, out, overwrite=overwrite, callbacks=group(progress, track))
        from medconvnext.engine import distributed

        if not distributed.is_main():  # under torchrun only rank 0 reports
            distributed.cleanup()
            return
        distributed.cleanup()
        best = result.best_metrics
        if result.epochs_run == 0:  # a finished run resumed for its missing TTA validation predictions
            from medconvnext.rundir import RunDir

            console.print(f"the run had finished: nothing trained; its validation predictions with TTA are in "
                          f"{RunDir(result.run_dir).val_predictions_tta} (`medconvnext report {result.run_dir}` fits "
                          "the operating point for --tta on them)", highlight=False)
        console.print(
            f"[bold green]done[/bold green]: best epoch {result.best_epoch}, "
            f"val AUC {_fmt(best['val_auc'])}, val accuracy {_fmt(best['val_accuracy'])}; "
            f"checkpoint in {result.run_dir}"
        )

    # Ctrl-C / SIGTERM: how to continue the run (never --overwrite, which would delete its finished epochs)
    run_guarded(work, resume_hint(resume or out, "medconvnext train --resume"))


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def tracker(kind: str, uri: str | None, experiment: str, parent: str | None = None, parent_dir: Path | None = None):
    """The ``--tracking`` callbacks as a context manager (a no-op for ``none``)."""
    import contextlib
    import os

    if kind == "none" or os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 logs
        return contextlib.nullcontext(None)
    from medconvnext.tracking import MlflowTracker

    return MlflowTracker(uri, experiment, parent=parent, parent_dir=parent_dir)


def group(*callbacks: Any) -> Any:
    """One callbacks object for the trainer (None members are left out)."""
    from medconvnext.tracking import CallbackGroup

    return CallbackGroup(*callbacks)
