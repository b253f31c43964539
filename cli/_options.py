"""Options shared by ``train`` and ``cv``, and the config they resolve to (defaults < --config < flags < --set)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

DATA = typer.Option(None, "--data", help="Folder (labels.csv or one subfolder per class) or a CSV/TSV.")
MODEL = typer.Option(None, "--model", help="Registered model name (see `medconvnext models`).")
EPOCHS = typer.Option(None, "--epochs", min=1, help="Number of epochs.")
BATCH_SIZE = typer.Option(None, "--batch-size", min=1, help="Volumes per batch.")
LR = typer.Option(None, "--lr", help="Peak learning rate (AdamW).")
SEED = typer.Option(None, "--seed", help="Random seed (split, init, augmentation).")
DEVICE = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N")
CONFIG = typer.Option(None, "--config", help="YAML config; CLI flags override it.")
SET = typer.Option([], "--set", help="Override any config field: section.key=value (repeatable).")
STRICT = typer.Option(
    False, "--strict", help="Refuse (exit 2) when a subject or an identical image is on both sides of a split."
)
TENSORBOARD = typer.Option(False, "--tensorboard", help="Also log to <out>/tensorboard (needs tensorboard).")


def build_config(
    config: Path | None,
    set_: list[str],
    *,
    data: Path | None = None,
    model: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int | None = None,
    device: str | None = None,
    strict: bool = False,
    tensorboard: bool = False,
    **more: Any,
) -> Any:
    """The run's :class:`~medconvnext.config.Config`: defaults < ``--config`` < flags < ``--set``.

    ``more`` maps further dotted config fields to flag values (None = not given).
    """
    from medconvnext.config import apply_overrides, load_config, parse_set_option

    cfg = load_config(config)
    flags = {
        "data.path": str(data) if data is not None else None,
        "model.name": model,
        "train.epochs": epochs,
        "train.batch_size": batch_size,
        "train.lr": lr,
        "train.seed": seed,
        "train.device": device,
        "train.tensorboard": True if tensorboard else None,
        "data.leakage": "error" if strict else None,
        **more,
    }
    apply_overrides(cfg, {k: v for k, v in flags.items() if v is not None}, "command line")
    apply_overrides(cfg, dict(parse_set_option(item) for item in set_), "--set")
    return cfg
