"""``medconvnext pretrain``: masked-autoencoder (FCMAE) pretraining of a ConvNeXt on unlabelled scans."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from medconvnext.choices import ReconstructionLoss
from medconvnext.cli import _options as options
from medconvnext.cli._common import console, resume_hint, run_guarded


def pretrain(
    data: Path = typer.Option(None, "--data", help="Scans: any form `train` takes (labels ignored) or a folder of "
                              "scans."),
    out: Path = typer.Option(None, "--out", help="Run directory to create."),
    model: str = options.MODEL,
    epochs: int = options.EPOCHS,
    batch_size: int = options.BATCH_SIZE,
    lr: float = options.LR,
    seed: int = typer.Option(None, "--seed", help="Random seed (init, masks, augmentation). "
                             + options.config_default("train.seed")),
    device: str = options.DEVICE,
    mask_ratio: float = typer.Option(0.6, "--mask-ratio", min=0.05, max=0.95, help="Share of units masked."),
    patch_size: int = typer.Option(8, "--patch-size", min=1,
                                   help="Masking unit in voxels per axis (a multiple of the stem stride)."),
    decoder_dim: int = typer.Option(128, "--decoder-dim", min=8, help="Decoder channels."),
    norm_target: bool = typer.Option(False, "--norm-target/--no-norm-target", metavar="",
                                     help="Reconstruct per-unit normalised voxels (ConvNeXt V2's norm_pix_loss)."),
    loss: ReconstructionLoss = typer.Option(
        "mse", "--loss", help="Reconstruction loss: mse (the paper's) or bce for scans in [0, 1] such as masks "
        "(needs preprocessing.intensity minmax)."),
    include_test: bool = typer.Option(False, "--include-test/--no-include-test", metavar="",
                                      help="Also pretrain on the data's `test` rows."),
    config: Path = options.CONFIG,
    set_: list[str] = options.SET,
    overwrite: bool = typer.Option(
        False, "--overwrite/--no-overwrite", metavar="", help="Replace an existing run in --out."),
    resume: Path = typer.Option(None, "--resume", help="Continue this pretraining run (only --epochs may change)."),
) -> None:
    """Pretrain a ConvNeXt encoder by masked reconstruction; fine-tune it with `train --init RUN`."""

    def work() -> None:
        from medconvnext.engine.pretrain import PretrainOptions, resume_pretrain
        from medconvnext.engine.pretrain import pretrain as run_pretrain
        from medconvnext.errors import UserError

        with PretrainProgress() as progress:
            if resume is not None:
                result = resume_pretrain(resume, epochs=epochs, callbacks=progress)
            else:
                if data is None or out is None:
                    raise UserError("--data and --out are required (or --resume RUN_DIR to continue a run)")
                cfg = options.build_config(config, set_, data=data, model=model, epochs=epochs,
                                           batch_size=batch_size, lr=lr, seed=seed, device=device)
                opts = PretrainOptions(mask_ratio, patch_size, decoder_dim, norm_target, include_test, loss)
                result = run_pretrain(cfg, out, opts, overwrite=overwrite, callbacks=progress)
        from medconvnext.engine import distributed

        main = distributed.is_main()
        distributed.cleanup()
        if not main:  # under torchrun only rank 0 reports
            return
        last = result.history[-1]
        from medconvnext.cli._render import plural

        console.print(f"[bold green]done[/bold green]: {plural(last['epoch'], 'epoch')}, reconstruction loss "
                      f"{last['loss']:.4f}; encoder in {result.run_dir / 'checkpoint_encoder.safetensors'}")

    run_guarded(work, resume_hint(resume or out, "medconvnext pretrain --resume"))


class PretrainProgress:
    """Rich progress bar with the reconstruction loss."""

    def __enter__(self) -> PretrainProgress:
        from medconvnext.cli._render import epoch_progress

        self._progress = epoch_progress("loss {task.fields[loss]}")
        self._started = False  # the live display starts with training: an early error prints no empty line
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started:
            self._progress.__exit__(*exc)

    def on_plan(self, plan: dict[str, Any]) -> None:
        from medconvnext.cli._render import print_plan

        print_plan(plan, self._progress.console)

    def on_start(self, total_epochs: int, steps_per_epoch: int) -> None:
        self._steps, self._epochs = steps_per_epoch, total_epochs
        if not self._started:
            self._progress.__enter__()
            self._started = True
        self._task = self._progress.add_task("pretrain", total=total_epochs * steps_per_epoch,
                                             epoch=f"1/{total_epochs}", loss="-")

    def on_step(self, epoch: int, step: int, loss: float) -> None:
        self._progress.update(self._task, completed=(epoch - 1) * self._steps + step,
                              epoch=f"{epoch}/{self._epochs}", loss=f"{loss:.4f}")

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        self._progress.update(self._task, loss=f"{record['loss']:.4f}")
