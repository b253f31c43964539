"""Options shared by ``train`` and ``cv``, and the config they resolve to (defaults < --config < flags < --set)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from medconvnext.choices import Tracker
from medconvnext.config import Config

Tracking = Tracker  # train and cv: --tracking

# flags left unset fall back to the config (its file, or the built-in default shown in --help)
_DEFAULTS = Config()


def config_default(field: str) -> str:
    """``[default: <value> (<section.key>)]`` for a flag whose unset value comes from the config."""
    section, key = field.split(".")
    value = getattr(getattr(_DEFAULTS, section), key)
    if isinstance(value, bool):  # a --flag/--no-flag pair: on or off, as the flag reads
        value = "on" if value else "off"
    return f"[default: {value} ({field})]"


DATA = typer.Option(None, "--data", help="Folder (labels.csv or one subfolder per class) or a CSV/TSV. "
                    "[default: data.path of --config]")
MODEL = typer.Option(None, "--model", help="Registered model name (see `medconvnext models`). "
                     + config_default("model.name"))
EPOCHS = typer.Option(None, "--epochs", min=1, help="Number of epochs. " + config_default("train.epochs"))
BATCH_SIZE = typer.Option(None, "--batch-size", min=1, help="Volumes per batch. " + config_default("train.batch_size"))
LR = typer.Option(None, "--lr", help="Peak learning rate (AdamW). " + config_default("train.lr"))
SEED = typer.Option(None, "--seed", help="Random seed (split, init, augmentation). " + config_default("train.seed"))
DEVICE = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N (auto: CUDA when available). "
                      + config_default("train.device"))
CONFIG = typer.Option(None, "--config", help="YAML config; CLI flags override it. [default: built-in defaults]")
SET = typer.Option([], "--set", metavar="<section.key=value>",
                   help="Override any config field: section.key=value (repeatable).")
OUTPUT_OVERWRITE = typer.Option(
    False, "--overwrite/--no-overwrite", metavar="",
    help="Replace existing output files (--output, maps) that medconvnext did not write (or that were changed since).")
STRICT = typer.Option(
    None, "--strict/--no-strict", show_default=False, metavar="",
    help="Refuse (exit 2) when a subject or an identical image is on both sides of a split; --no-strict only "
         "warns. [default: data.leakage of the config (warn)]",
)
TENSORBOARD = typer.Option(
    None, "--tensorboard/--no-tensorboard", show_default=False, metavar="",
    help="Also log to <out>/tensorboard (needs tensorboard). " + config_default("train.tensorboard"),
)
TRACKING = typer.Option(
    "none", "--tracking", help="Log params, per-epoch metrics and the run folder to an experiment tracker "
    "(mlflow needs pip install 'medconvnext[mlflow]').",
)
TRACKING_URI = typer.Option(
    None, "--tracking-uri", help="MLflow tracking URI (a folder, file:///..., sqlite:///..., http://...). "
    "[default: ./mlruns]",
)
EXPERIMENT = typer.Option("medconvnext", "--experiment", help="MLflow experiment name.")
TARGET_SENSITIVITY = typer.Option(
    None, "--target-sensitivity", min=0.0, max=1.0,
    help="Operating point: the highest threshold whose out-of-fold sensitivity reaches this value (binary "
         "only). [default: Youden's J (max sensitivity + specificity - 1)]",
)

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
    strict: bool | None = None,
    tensorboard: bool | None = None,
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
        "train.tensorboard": tensorboard,
        "data.leakage": None if strict is None else ("error" if strict else "warn"),
        **more,
    }
    apply_overrides(cfg, {k: v for k, v in flags.items() if v is not None}, "command line")
    apply_overrides(cfg, dict(parse_set_option(item) for item in set_), "--set")
    return cfg
