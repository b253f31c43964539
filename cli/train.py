"""``medconvnext train``: train one model on a datalist into a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from medconvnext.cli import _options as options
from medconvnext.cli._common import console, run_guarded


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
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run in --out."),
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
) -> None:
    """Train a 3D classifier and save the best checkpoint (by validation AUC) in --out."""

    def work() -> None:
        from medconvnext.engine.trainer import resume as resume_training
        from medconvnext.engine.trainer import train as run_training
        from medconvnext.errors import UserError

        if resume is not None:
            # the run's own config.yaml decides everything else, so a resumed run is the run that was started
            rejected = {"--data": data, "--out": out, "--model": model, "--batch-size": batch_size, "--lr": lr,
                        "--seed": seed, "--config": config, "--set": set_ or None, "--tensorboard": tensorboard or None,
                        "--overwrite": overwrite or None, "--init-2d": init_2d, "--init": init,
                        "--strict": strict or None}
            given = [name for name, value in rejected.items() if value is not None]
            if given:
                raise UserError(f"--resume uses the run's config.yaml; drop {', '.join(given)} (only --epochs and "
                                "--device may change)")
            with TrainingProgress() as progress:
                result = resume_training(resume, epochs=epochs, device=device, callbacks=progress)
        else:
            if out is None:
                raise UserError("--out is required (or --resume RUN_DIR to continue a run)")
            cfg = options.build_config(
                config, set_, data=data, model=model, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                device=device, strict=strict, tensorboard=tensorboard,
                **{"model.init_2d": str(init_2d) if init_2d is not None else None,
                   "model.init": str(init) if init is not None else None},
            )
            with TrainingProgress() as progress:
                result = run_training(cfg, out, overwrite=overwrite, callbacks=progress)
        from medconvnext.engine import distributed

        if not distributed.is_main():  # under torchrun only rank 0 reports
            distributed.cleanup()
            return
        distributed.cleanup()
        best = result.best_metrics
        console.print(
            f"[bold green]done[/bold green]: best epoch {result.best_epoch}, "
            f"val AUC {_fmt(best['val_auc'])}, val accuracy {_fmt(best['val_accuracy'])}; "
            f"checkpoint in {result.run_dir}"
        )

    run_guarded(work)


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


class TrainingProgress:
    """Rich progress bar with loss and the validation metric; implements TrainingCallbacks.

    Under torchrun only rank 0 shows it (the RANK variable is read here, before the process group exists).
    """

    def __enter__(self) -> TrainingProgress:
        import os

        self._task = None
        if os.environ.get("RANK", "0") != "0":
            self._progress = None
            return self
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  val AUC {task.fields[auc]}  best {task.fields[best]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def on_start(self, total_epochs: int, steps_per_epoch: int) -> None:
        self._steps = steps_per_epoch
        self._task = self._progress.add_task(
            "train", total=total_epochs * steps_per_epoch, epoch=f"1/{total_epochs}", loss="-", auc="-", best="-"
        )
        self._total_epochs = total_epochs

    def on_step(self, epoch: int, step: int, loss: float) -> None:
        self._progress.update(
            self._task, completed=(epoch - 1) * self._steps + step, epoch=f"{epoch}/{self._total_epochs}",
            loss=f"{loss:.4f}",
        )

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        self._progress.update(self._task, auc=_fmt(record["val_auc"]), best=f"epoch {record['best_epoch']}")
