"""2D -> 3D weight inflation: load an ImageNet 2D ConvNeXt state dict into :class:`ConvNeXt3d`.

Both common namings are understood and detected from the keys:

- timm: ``stem.0`` (conv), ``stem.1`` (norm), ``stages.N.downsample.{0,1}``, ``stages.N.blocks.M.{conv_dw, norm,
  mlp.fc1, mlp.fc2, gamma}``, ``head.norm``, ``head.fc``;
- facebookresearch/ConvNeXt: ``downsample_layers.0.{0,1}`` (stem), ``downsample_layers.N.{0,1}``,
  ``stages.N.M.{dwconv, norm, pwconv1, pwconv2, gamma}``, ``norm``, ``head``.

Convolution kernels (O, I, kh, kw) become (O, I, kd, kh, kw), kd being the 3D model's depth extent:

- ``mode="center"``: the 2D kernel on the middle depth slice (index kd // 2), zeros elsewhere. A 3D model
  built with depth-1 strides applied to a one-slice volume reproduces the 2D network exactly.
- ``mode="mean"``: the 2D kernel replicated over depth and divided by kd (I3D): a volume constant over depth
  gives the 2D activations (away from depth borders).

The stem is adapted to ``in_channels``: for 1 channel the RGB kernels are summed (a grey image copied to
R, G and B gives the same output); for another count c the RGB kernels are repeated cyclically over the c
channels and scaled by 3 / c, so an input with every channel equal to a grey image gives about the same
response (exactly when c is a multiple of 3) - as timm's ``adapt_input_conv`` does.

The classifier (``head``) is kept only when its class count matches the model's; otherwise it stays at
its initialisation and the report says so. Only ``norm="layernorm"`` reproduces the 2D numerics exactly:
with the default GroupNorm(1) the per-channel affine weights still load, but normalisation differs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from medconvnext.choices import Init2dMode, choices
from medconvnext.errors import UserError

_TIMM_RULES = [
    (r"^stem\.([01])\.(weight|bias)$", lambda m: f"stem.{m[1]}.{m[2]}"),
    (r"^stages\.(\d+)\.downsample\.([01])\.(weight|bias)$", lambda m: f"downsample.{int(m[1]) - 1}.{m[2]}.{m[3]}"),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.(weight|bias)$", lambda m: f"stages.{m[1]}.{m[2]}.dwconv.{m[3]}"),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.norm\.(weight|bias)$", lambda m: f"stages.{m[1]}.{m[2]}.norm.{m[3]}"),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc1\.(weight|bias)$", lambda m: f"stages.{m[1]}.{m[2]}.pwconv1.{m[3]}"),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc2\.(weight|bias)$", lambda m: f"stages.{m[1]}.{m[2]}.pwconv2.{m[3]}"),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.gamma$", lambda m: f"stages.{m[1]}.{m[2]}.gamma"),
    (r"^head\.norm\.(weight|bias)$", lambda m: f"head_norm.{m[1]}"),
    (r"^head\.fc\.(weight|bias)$", lambda m: f"head.{m[1]}"),
]
_FB_RULES = [
    (r"^downsample_layers\.0\.([01])\.(weight|bias)$", lambda m: f"stem.{m[1]}.{m[2]}"),
    (r"^downsample_layers\.(\d+)\.([01])\.(weight|bias)$", lambda m: f"downsample.{int(m[1]) - 1}.{m[2]}.{m[3]}"),
    (
        r"^stages\.(\d+)\.(\d+)\.(dwconv|norm|pwconv1|pwconv2)\.(weight|bias)$",
        lambda m: f"stages.{m[1]}.{m[2]}.{m[3]}.{m[4]}",
    ),
    (r"^stages\.(\d+)\.(\d+)\.gamma$", lambda m: f"stages.{m[1]}.{m[2]}.gamma"),
    (r"^norm\.(weight|bias)$", lambda m: f"head_norm.{m[1]}"),
    (r"^head\.(weight|bias)$", lambda m: f"head.{m[1]}"),
]


@dataclass
class InflationReport:
    """What :func:`load_2d_weights` did."""

    source_format: str
    mode: str
    loaded: list[str] = field(default_factory=list)  # our parameter names that received 2D weights
    missing: list[str] = field(default_factory=list)  # our parameter names left at their initialisation
    unused: list[str] = field(default_factory=list)  # source keys with no counterpart
    head_loaded: bool = False
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One paragraph for logs."""
        lines = [
            f"loaded {len(self.loaded)} tensors from a {self.source_format} 2D ConvNeXt (mode={self.mode}); "
            f"{len(self.missing)} left at init, {len(self.unused)} source keys unused"
        ]
        return "\n".join(lines + self.notes)


def detect_format(state_dict: dict[str, torch.Tensor]) -> str:
    """``"facebookresearch"`` or ``"timm"`` from the key names; ValueError when neither."""
    keys = list(state_dict)
    if any(k.startswith("downsample_layers.") for k in keys):
        return "facebookresearch"
    if any(k.startswith("stem.0.") for k in keys) and any(".blocks." in k for k in keys):
        return "timm"
    raise ValueError(
        f"not a 2D ConvNeXt state dict in timm or facebookresearch naming (first keys: {', '.join(keys[:5])})"
    )


def rename_2d_keys(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str], str]:
    """Map source names to ConvNeXt3d names: (renamed dict, unused source keys, detected format)."""
    source_format = detect_format(state_dict)
    rules = _FB_RULES if source_format == "facebookresearch" else _TIMM_RULES
    renamed, unused = {}, []
    for key, value in state_dict.items():
        for pattern, target in rules:
            match = re.match(pattern, key)
            if match:
                renamed[target(match)] = value
                break
        else:
            unused.append(key)
    return renamed, unused, source_format


def inflate_kernel(weight: torch.Tensor, depth: int, mode: str) -> torch.Tensor:
    """(O, I, kh, kw) -> (O, I, depth, kh, kw) by ``mode`` ("center" or "mean")."""
    if mode not in choices(Init2dMode):
        raise ValueError(f"mode must be one of {choices(Init2dMode)}, got {mode!r}")
    if mode == "mean":
        return weight.unsqueeze(2).repeat(1, 1, depth, 1, 1) / depth
    out = weight.new_zeros(weight.shape[:2] + (depth,) + weight.shape[2:])
    out[:, :, depth // 2] = weight
    return out


def adapt_input_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Stem kernel (O, 3, ...) -> (O, in_channels, ...): sum for 1 channel, cyclic repeat x 3/c otherwise."""
    source = weight.shape[1]
    if in_channels == source:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_channels // source)
    return weight.repeat(1, repeats, *([1] * (weight.ndim - 2)))[:, :in_channels] * (source / in_channels)


def load_2d_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], mode: str = "center") -> InflationReport:
    """Load a 2D ConvNeXt ``state_dict`` (timm or facebookresearch naming) into a 3D ConvNeXt ``model``.

    Shapes other than the depth axis and the stem's input channels must match (same variant widths and
    in-plane kernel sizes); a mismatch raises ValueError naming the parameter, as does a model with
    ``stem_conv_channels`` (the 2D stem was trained on image channels, not on a convolution's outputs).
    """
    if mode not in choices(Init2dMode):
        raise ValueError(f"mode must be one of {choices(Init2dMode)}, got {mode!r}")
    if not isinstance(getattr(model, "pre_stem", nn.Identity()), nn.Identity):
        raise ValueError("2D weights need the stem to read the image; stem_conv_channels puts a convolution before it")
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    renamed, unused, source_format = rename_2d_keys(state_dict)
    report = InflationReport(source_format=source_format, mode=mode, unused=unused)
    target = model.state_dict()
    new: dict[str, torch.Tensor] = {}
    for key, value in renamed.items():
        if key not in target:
            report.unused.append(key)
            continue
        want = target[key]
        value = value.detach().to(want.dtype)
        if key == "stem.0.weight" and value.shape[1] != want.shape[1]:
            report.notes.append(f"stem adapted from {value.shape[1]} to {want.shape[1]} input channels")
            value = adapt_input_channels(value, want.shape[1])
        if want.ndim == 5 and value.ndim == 4:
            value = inflate_kernel(value, want.shape[2], mode)
        elif want.ndim == 2 and value.ndim == 4:
            value = value.flatten(1)  # timm conv_mlp=True stores the MLP as 1x1 convs
        if key.startswith("head.") and value.shape != want.shape:
            continue  # class count differs: handled below
        if value.shape != want.shape:
            raise ValueError(
                f"cannot load 2D weight for {key}: shape {tuple(value.shape)} does not fit {tuple(want.shape)}; "
                "is the 3D model the same ConvNeXt variant (dims, depths, in-plane kernel sizes)?"
            )
        new[key] = value
    head_weight = renamed.get("head.weight")
    report.head_loaded = "head.weight" in new
    if head_weight is not None and not report.head_loaded:
        classes = target["head.weight"].shape[0]
        report.notes.append(f"head dropped: the 2D weights have {head_weight.shape[0]} classes, the model {classes}")
    model.load_state_dict(new, strict=False)
    report.loaded = sorted(new)
    report.missing = sorted(k for k in target if k not in new)
    if not any(k.startswith("stages.") for k in new):
        raise ValueError("no block weights matched: is the model a ConvNeXt3d?")
    if any(getattr(m, "num_groups", None) == 1 for m in model.modules() if isinstance(m, nn.GroupNorm)):
        report.notes.append('the model uses norm="groupnorm": affine weights loaded, but only "layernorm" matches 2D')
    return report


def load_2d_weights_file(model: nn.Module, path: str | Path, mode: str = "center") -> InflationReport:
    """:func:`load_2d_weights` from a ``.safetensors`` or ``.pth``/``.pt`` file.

    ``.pth`` files are read with ``torch.load(weights_only=True)``; a ``{"model": ...}`` or
    ``{"state_dict": ...}`` wrapper (as the facebookresearch and Lightning checkpoints have) is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"2D weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure means an unusable file
        # one line: torch's weights_only refusal spans many and suggests weights_only=False, which we never use
        first = (str(exc).strip().splitlines() or [""])[0]
        raise UserError(f"cannot read 2D weights {path}: not a weights file that loads without running pickled code "
                        f"({type(exc).__name__}: {first})") from exc
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict):
        raise UserError(f"{path} does not hold a state dict")
    return load_2d_weights(model, state, mode)
