"""Typed run configuration (dataclasses) <-> YAML, with dotted overrides.

Precedence: built-in defaults < ``--config FILE.yaml`` < CLI flags / ``--set section.key=value``.
Unknown keys and wrongly typed values are user errors that name the field.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

# The choices of every mode field: one Literal each, spelled in medconvnext.choices, where modules read them
# (choices(Cache) for the values) instead of keeping a copy.
from medconvnext.choices import (
    Aggregation,
    Augment,
    AugmentOn,
    Balance,
    Cache,
    Crop,
    InferenceMode,
    Init2dMode,
    Intensity,
    Leakage,
    Modality,
    Patches,
    Select,
)
from medconvnext.errors import UserError
from medconvnext.spelling import type_words, yaml_spelling


@dataclass
class ModelConfig:
    """Which registered model, and overrides of its architecture arguments."""

    name: str = "convnext_atto"
    args: dict[str, Any] = field(default_factory=dict)
    init_2d: str | None = None  # a 2D ConvNeXt state dict (.pth/.safetensors) inflated into the 3D model
    init_2d_mode: Init2dMode = "center"  # center | mean (see medconvnext.models.inflate)
    init: str | None = None  # 3D weights: a pretrain/train run folder or a .safetensors checkpoint (not the head)


@dataclass
class DataConfig:
    """Where the cases come from and how they are fed."""

    path: str | None = None
    val_fraction: float = 0.2
    cache: Cache = "memory"  # none | memory | disk
    cache_dir: str | None = None  # disk cache folder; None -> $MEDCONVNEXT_CACHE_DIR or ~/.cache/medconvnext
    # loader worker processes; None: automatic (0 on CPU; on CUDA this process's share of the CPUs less one,
    # at most 8; engine.feeding.auto_num_workers)
    num_workers: int | None = None
    augment: Augment = "light"  # none | flips | light | medium | heavy
    augment_on: AugmentOn = "loader"  # run the random augmentation in the loader or on the training device
    skip_bad: bool = False  # leave out cases whose images fail validation (data.validate.validate_datalist)
    leakage: Leakage = "warn"  # warn | error | off: a subject or an identical image on both sides (data.leakage)


@dataclass
class PreprocessingConfig:
    """Deterministic preprocessing. ``None`` means: plan it from the data's fingerprint."""

    orientation: str = "RAS"
    spacing: list[float] | None = None
    input_size: list[int] | None = None
    modality: Modality = "generic"  # picks the intensity normalisation when intensity is auto
    # auto (ct -> clip_zscore, mri -> nonzero_zscore, mask -> minmax, generic -> zscore) or one of the schemes
    intensity: Intensity = "auto"
    clip: list[float] | None = None  # intensity window for clip_zscore, e.g. CT HU [-1000, 1000]; None -> percentiles
    mean: float | None = None  # dataset statistics for clip_zscore; None -> computed from the training cases
    std: float | None = None
    # crop each scan to its foreground before resampling: auto (ct -> body, mri -> nonzero, else none) | none | body
    # (HU > -500, largest component) | nonzero (data/foreground.py)
    crop: Crop = "auto"
    # voxel budget of the model input: when spacing is planned, it is coarsened (finest axes first) until the
    # largest cropped training extent fits in this many voxels; None: no budget (each axis capped at 256)
    max_input_voxels: int | None = 128**3


@dataclass
class TrainConfig:
    """Optimisation."""

    epochs: int = 30
    batch_size: int = 4
    lr: float = 3e-4  # for batch 4; scale linearly with the batch size
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    seed: int = 0
    amp: bool = True  # mixed precision on CUDA; always off on CPU
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # training recipe (defaults = plain cross-entropy training)
    label_smoothing: float = 0.0
    mixup: float = 0.0  # Beta(alpha, alpha) of mixup; 0 = off (the ConvNeXt recipe: 0.8)
    cutmix: float = 0.0  # Beta(alpha, alpha) of 3D CutMix; 0 = off (the ConvNeXt recipe: 1.0)
    mix_prob: float = 1.0  # share of batches mixed when mixup or cutmix is on
    drop_path_rate: float | None = None  # stochastic depth; None keeps the model's own default
    ema: bool = False  # evaluate and save an exponential moving average of the weights
    ema_decay: float = 0.999
    # with ema and BatchNorm: before each validation the EMA's BatchNorm statistics are recomputed for the averaged
    # weights on this many training batches (deterministic preprocessing, no augmentation); 0 = averaged as the
    # other buffers (stale while the weights move fast: docs/benchmarks.md, "EMA and BatchNorm")
    ema_bn_batches: int = 16
    accumulate: int = 1  # gradient accumulation: optimizer steps every N batches
    clip_grad_norm: float | None = None
    balance: Balance = "none"  # none | weights (class-weighted loss) | sampler (class-balanced sampling)
    early_stopping_patience: int | None = None  # stop after N epochs without a better validation score
    # which epoch becomes checkpoint_best: the best validation AUC (loss breaks ties), or the last epoch (the
    # reference recipes' final weights; safer when the validation set is small: see docs/benchmarks.md)
    select: Select = "val_auc"  # val_auc | last
    layer_decay: float | None = None  # layer-wise lr decay for fine-tuning (ConvNeXt), e.g. 0.8; None = off
    compile: bool = False  # torch.compile the model
    tensorboard: bool = False  # also log to <run>/tensorboard when tensorboard is installed
    # none | random | foreground: train on input-size crops of the full volumes, each with the volume's label;
    # mil: each item a bag of mil_bag_size crops pooled by gated attention into one volume logit (models/mil.py)
    patches: Patches = "none"
    mil_bag_size: int = 8  # train.patches=mil: patches per bag (K); validation and predict pool every window
    mil_foreground_share: float = 0.5  # train.patches=mil: share of a bag's patches centred on a foreground voxel


@dataclass
class InferenceConfig:
    """How validation and predict run the model over a preprocessed volume."""

    mode: InferenceMode = "whole"  # whole | sliding | auto (sliding when the volume exceeds 2x the input size)
    roi_size: list[int] | None = None  # None: the training input size
    overlap: float = 0.25
    sw_batch_size: int = 4
    aggregation: Aggregation = "mean"  # mean | max | logit_mean


@dataclass
class Config:
    """Everything a run needs; saved resolved as ``config.yaml`` in the run directory."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> Config:
        """Check every field's type, choice and range (:data:`RANGES`); raises UserError naming the first bad field.

        Run when a config is built from YAML or ``--set`` and again at the top of every library entry point
        (``train``, ``resume``, ``cross_validate``, ``pretrain``), so a config assembled in Python is checked before
        anything is written. Returns the config (values normalised: a scalar spacing becomes three values).
        """
        for section_field in dataclasses.fields(self):
            validate_section(getattr(self, section_field.name), section_field.name)
        return self


def validate_section(section: Any, name: str) -> Any:
    """:meth:`Config.validate` for one section (e.g. the ``inference`` settings stored in a checkpoint, or given
    to ``predict``), its fields named ``<name>.<field>``; returns the section, normalised in place.

    Raises:
        UserError: naming the first field of a wrong type, choice or range.
    """
    hints = typing.get_type_hints(type(section))
    for item in dataclasses.fields(section):
        dotted = f"{name}.{item.name}"
        value = _coerce(getattr(section, item.name), hints[item.name], dotted)
        setattr(section, item.name, value)
        _check_range(dotted, value)
    return section


# Ranges of the numeric fields: dotted name -> (low, high, low inclusive, high inclusive); None = unbounded. Lists
# (spacing, sizes) are checked per value and must have three.
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "data.val_fraction": (0.0, 1.0, False, False),
    "data.num_workers": (0, None, True, True),
    "preprocessing.spacing": (0.0, None, False, True),
    "preprocessing.input_size": (1, None, True, True),
    "preprocessing.max_input_voxels": (1, None, True, True),
    "preprocessing.std": (0.0, None, False, True),
    "train.epochs": (1, None, True, True),
    "train.batch_size": (1, None, True, True),
    "train.lr": (0.0, None, True, True),  # 0 freezes the weights (a test does)
    "train.weight_decay": (0.0, None, True, True),
    "train.warmup_epochs": (0, None, True, True),
    "train.label_smoothing": (0.0, 1.0, True, False),
    "train.mixup": (0.0, None, True, True),
    "train.cutmix": (0.0, None, True, True),
    "train.mix_prob": (0.0, 1.0, True, True),
    "train.drop_path_rate": (0.0, 1.0, True, False),
    "train.ema_decay": (0.0, 1.0, True, False),
    "train.ema_bn_batches": (0, None, True, True),
    "train.accumulate": (1, None, True, True),
    "train.clip_grad_norm": (0.0, None, False, True),
    "train.early_stopping_patience": (1, None, True, True),
    "train.layer_decay": (0.0, 1.0, False, True),
    "inference.roi_size": (1, None, True, True),
    "inference.overlap": (0.0, 1.0, True, False),
    "inference.sw_batch_size": (1, None, True, True),
}
THREE_VALUES = ("preprocessing.spacing", "preprocessing.input_size", "inference.roi_size")


def _check_range(dotted: str, value: Any, where: str = "") -> None:
    """UserError naming ``dotted`` (after ``where``) when ``value`` (or one of its list) is outside :data:`RANGES`."""
    if value is None or dotted not in RANGES:
        return
    name = f"{where}: {dotted}" if where else dotted
    if dotted in THREE_VALUES and len(value) != 3:
        raise UserError(f"{name} = {yaml_spelling(value)} needs 3 values (x, y, z)")
    low, high, low_in, high_in = RANGES[dotted]
    for v in value if isinstance(value, list) else [value]:
        below = low is not None and (v < low if low_in else v <= low)
        above = high is not None and (v > high if high_in else v >= high)
        if below or above:
            raise UserError(f"{name} = {yaml_spelling(value)} is out of range: "
                            f"{_range_words(low, high, low_in, high_in)}")


def _range_words(low: float | None, high: float | None, low_in: bool, high_in: bool) -> str:
    if high is None:
        return f"must be {'>=' if low_in else '>'} {low:g}"
    return f"must be in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats: PyYAML follows YAML 1.1, which reads ``3e-4`` (no dot) as the
    string '3e-4', the way most people write a learning rate."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+(?:[eE][-+]?[0-9]+)?)$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse YAML safely (no Python objects), reading ``1e-3`` as a number; raises yaml.YAMLError."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def config_from_dict(values: dict[str, Any], where: str = "config") -> Config:
    """Build a Config from nested dicts; UserError names an unknown or mistyped field."""
    config = Config()
    apply_overrides(config, _flatten(values), where)
    return config.validate()


def load_config(path: str | Path | None) -> Config:
    """Defaults, updated by a YAML file when given."""
    if path is None:
        return Config()
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--config {path}: no such file")
    try:
        values = load_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}, line {line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); save the config as "
                        "UTF-8") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a mapping of sections (model, data, preprocessing, train, inference)")
    return config_from_dict(values, str(path))


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    from medconvnext.fileio import atomic_write

    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def parse_set_option(item: str) -> tuple[str, Any]:
    """``"train.lr=3e-4"`` -> ``("train.lr", 0.0003)`` (the value is parsed as YAML)."""
    if "=" not in item:
        raise UserError(f"--set {item!r}: expected section.key=value, e.g. train.lr=3e-4")
    key, raw = item.split("=", 1)
    try:
        return key.strip(), load_yaml(raw)
    except yaml.YAMLError:
        raise UserError(f"--set {item!r}: cannot parse the value") from None


def apply_overrides(config: Config, overrides: dict[str, Any], where: str = "override") -> Config:
    """Set dotted keys (``"train.lr"``; ``"model.args.drop_path_rate"``) in place, type-checked."""
    for dotted, value in overrides.items():
        _set_dotted(config, dotted, value, where)
    return config


def _set_dotted(config: Config, dotted: str, value: Any, where: str) -> None:
    parts = dotted.split(".")
    section_name = parts[0]
    if hasattr(config, section_name) and len(parts) == 1:
        first = dataclasses.fields(getattr(config, section_name))[0].name
        raise UserError(f"{where}: {section_name} must be a mapping of its fields (e.g. {section_name}: "
                        f"{{{first}: ...}}), got {yaml_spelling(value)}")
    if not hasattr(config, section_name) or len(parts) < 2:
        raise UserError(f"{where}: unknown field {dotted!r} (sections: model, data, preprocessing, train, inference)")
    section = getattr(config, section_name)
    key = parts[1]
    if section_name == "model" and key == "args" and len(parts) > 2:
        # model.args.mil.attention_dim=64 sets {"mil": {"attention_dim": 64}}: nested mappings, as in YAML
        target = section.args
        for name in parts[2:-1]:
            target = target.setdefault(name, {})
            if not isinstance(target, dict):
                raise UserError(f"{where}: {dotted}: model.args.{name} is {yaml_spelling(target)}, not a mapping")
        target[parts[-1]] = value
        return
    if len(parts) != 2 or key not in {f.name for f in dataclasses.fields(section)}:
        known = ", ".join(f"{section_name}.{f.name}" for f in dataclasses.fields(section))
        raise UserError(f"{where}: unknown field {dotted!r} (known: {known})")
    hint = typing.get_type_hints(type(section))[key]
    coerced = _coerce(value, hint, f"{where}: {dotted}")
    _check_range(dotted, coerced, where)
    setattr(section, key, coerced)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a simple type hint (int, float, str, bool, list[...], dict, Optional)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        if isinstance(value, str) and value in args:
            return value
        raise UserError(f"{where} = {yaml_spelling(value)} is not one of: {', '.join(args)}")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif origin is list:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value] * 3  # a scalar spacing/size means the same on every axis
        if isinstance(value, (list, tuple)):
            return [_coerce(v, args[0], where) for v in value]
    elif origin is dict or hint is dict:
        if isinstance(value, dict):
            return dict(value)
    raise UserError(f"{where} = {yaml_spelling(value)} is not {type_words(hint)}")


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections -> dotted keys; ``model.args`` stays a dict of its own."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted != "model.args" and prefix.count(".") < 1:
            flat.update(_flatten(value, dotted + "."))
        elif dotted == "model.args" and isinstance(value, dict):
            for arg, arg_value in value.items():
                flat[f"model.args.{arg}"] = arg_value
        else:
            flat[dotted] = value
    return flat
