"""3D ConvNeXt (Liu et al., "A ConvNet for the 2020s"), after facebookresearch/ConvNeXt and timm.

Numerics kept from the reference: patchify stem (kernel = stride = 4) then norm;
downsampling = norm then conv (kernel = stride = 2); blocks of depthwise 7³ conv ->
norm -> Linear 4x -> GELU -> Linear -> layer scale (1e-6) -> DropPath -> residual;
trunc-normal(0.02) init; global average pool -> LayerNorm -> Linear head.
Kernel sizes and strides accept per-axis values for anisotropic (thick-slice) data.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from medconvnext.layers import (
    DropPath,
    GRN3d,
    as_triple,
    check_global_pool,
    check_input_size,
    drop_path_rates,
    global_pool,
    init_weights,
    make_norm3d,
)
from medconvnext.layers.norm import NORMS
from medconvnext.layers.shapes import Triple
from medconvnext.models._dwconv import DepthwiseConv3d
from medconvnext.models._registry import register_model
from medconvnext.models.layer_ids import StagedLayerIds

IntOr3 = int | Sequence[int]


def _per_stage(value: IntOr3 | Sequence[IntOr3], stages: int, name: str) -> list[Triple]:
    """An int, a 3-tuple (all stages), or one int/3-tuple per stage -> one triple per stage."""
    if isinstance(value, int) or (len(value) == 3 and all(isinstance(v, int) for v in value)):
        return [as_triple(value, name)] * stages  # type: ignore[arg-type]
    if len(value) != stages:
        raise ValueError(f"{name} needs one value or {stages} values (one per stage), got {value!r}")
    return [as_triple(v, name) for v in value]  # type: ignore[arg-type]


class ConvNeXtBlock(nn.Module):
    """Depthwise conv -> norm -> inverted bottleneck MLP -> layer scale -> DropPath -> residual."""

    def __init__(
        self,
        dim: int,
        kernel_size: Triple = (7, 7, 7),
        drop_path: float = 0.0,
        layer_scale_init: float = 1e-6,
        norm: str = "groupnorm",
        mlp_ratio: int = 4,
        grn: bool = False,
    ) -> None:
        super().__init__()
        # an nn.Conv3d (same state-dict names) whose CPU backward is several times faster
        self.dwconv = DepthwiseConv3d(dim, kernel_size)
        self.norm = make_norm3d(norm, dim)
        # Linear on channels-last == 1x1x1 conv, and is faster on CPU and GPU
        self.pwconv1 = nn.Linear(dim, mlp_ratio * dim)
        self.act = nn.GELU()
        # ConvNeXt V2 puts GRN after the GELU and drops layer scale (layer_scale_init=0 turns it off here)
        self.grn = GRN3d(mlp_ratio * dim) if grn else nn.Identity()
        self.pwconv2 = nn.Linear(mlp_ratio * dim, dim)
        self.gamma = nn.Parameter(layer_scale_init * torch.ones(dim)) if layer_scale_init > 0 else None
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm(self.dwconv(x))
        x = x.permute(0, 2, 3, 4, 1)  # (N, D, H, W, C)
        x = self.pwconv2(self.grn(self.act(self.pwconv1(x))))
        if self.gamma is not None:
            x = x * self.gamma
        x = x.permute(0, 4, 1, 2, 3)
        return shortcut + self.drop_path(x)


class MixerBlock(nn.Module):
    """ConvMixer's layer (Trockman & Kolter, "Patches Are All You Need?") as a ConvNeXt block, for the Vessel
    diagnosis: residual(depthwise conv -> GELU -> norm) -> pointwise conv -> GELU -> norm. The residual is around
    the spatial mixing only; the channel mixing is one 1x1x1 layer (no 4x bottleneck) with a norm after it."""

    def __init__(self, dim: int, kernel_size: Triple = (5, 5, 5), drop_path: float = 0.0,
                 norm: str = "batchnorm") -> None:
        super().__init__()
        self.dwconv = DepthwiseConv3d(dim, kernel_size)
        self.act = nn.GELU()
        self.norm = make_norm3d(norm, dim)
        self.pwconv = nn.Conv3d(dim, dim, 1)
        self.norm2 = make_norm3d(norm, dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.norm(self.act(self.dwconv(x))))
        return self.norm2(self.act(self.pwconv(x)))


BLOCKS = ("convnext", "mixer")
INITS = ("trunc_normal", "torch_default")


def _check_pre_stem(channels: object, norm: object, stride: object) -> None:
    """ValueError naming the pre-stem argument that is not an int in range, or not a known norm."""
    for name, value, low in (("stem_conv_channels", channels, 0), ("stem_conv_stride", stride, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if norm is not None and norm not in (*NORMS, "none"):
        raise ValueError(f"stem_conv_norm must be one of {', '.join((*NORMS, 'none'))} (or unset: the model's "
                         f"norm), got {norm!r}")
    if (norm is not None or stride != 1) and not channels:
        raise ValueError("stem_conv_norm and stem_conv_stride set the pre-stem: they need stem_conv_channels > 0")


class ConvNeXt3d(StagedLayerIds, nn.Module):
    """3D ConvNeXt classifier for (N, C, D, H, W) volumes; numbers its layers for layer decay (StagedLayerIds)."""

    def __init__(
        self,
        num_classes: int = 2,
        in_channels: int = 1,
        depths: Sequence[int] = (3, 3, 9, 3),
        dims: Sequence[int] = (96, 192, 384, 768),
        kernel_size: IntOr3 | Sequence[IntOr3] = 7,
        stem_stride: IntOr3 = 4,
        stem_kernel_size: IntOr3 | None = None,
        stem_conv_channels: int = 0,
        stem_conv_norm: str | None = None,
        stem_conv_stride: int = 1,
        stem_conv_init: str = "trunc_normal",
        downsample_strides: IntOr3 | Sequence[IntOr3] = 2,
        norm: str = "groupnorm",
        drop_path_rate: float = 0.0,
        layer_scale_init: float = 1e-6,
        mlp_ratio: int = 4,
        grn: bool = False,
        head_init_scale: float = 1.0,
        head_dropout: float = 0.0,
        grad_checkpointing: bool = False,
        block: str = "convnext",
        stem_act: bool = False,
        head_norm: bool = True,
        init: str = "trunc_normal",
        global_pool: str = "avg",
    ) -> None:
        """
        Args:
            depths, dims: blocks and channels per stage.
            kernel_size: depthwise kernel; int, (D, H, W), or one per stage, e.g. ``[(1,7,7), (1,7,7), 7, 7]``.
            stem_stride: patchify stem kernel = stride; int or (D, H, W), e.g. ``(1, 4, 4)`` for thick slices;
                ``2`` (or 1) keeps resolution for small (28-32³) inputs.
            stem_kernel_size: ``None`` (the paper's patchify stem: kernel = stride) or a larger kernel, e.g. 7,
                for overlapping patches (padded to keep ``size / stride`` outputs); costs little, since the stem
                sees only the input channels, and makes the stem's output change smoothly with sub-patch shifts.
            stem_conv_channels: 0 (the paper) or C > 0: a 3³ convolution to C channels, the norm and GELU at full
                resolution before the patchify stem, so each patch is read through a nonlinear, overlapping
                filter (what the ResNet/DenseNet stems do) instead of one linear map. Not for FCMAE pretraining
                (the 3³ filter would mix masked and visible voxels).
            stem_conv_norm: the pre-stem's norm: ``None`` (the model's ``norm``), one of the norms below, or
                ``"none"`` (conv with bias + GELU: no batch statistics at full resolution, and no per-case
                normalisation, which on masks would divide by the foreground fraction).
            stem_conv_stride: stride of the pre-stem's convolution (1: full resolution). 2 halves the grid before
                the patchify stem, so the model's total stride is ``2 * stem_stride``: a 64³ input gets the 8³
                token grid of an 8³ patchify stem at a quarter of the full-resolution pre-stem's cost (the
                "early convolutions" stem of Xiao et al. 2021, one layer deep).
            stem_conv_init: the pre-stem convolution's init: ``"trunc_normal"`` (std 0.02, as every other layer)
                or ``"kaiming"`` (He et al. 2015 normal, fan-in, ReLU gain, zero bias). With std 0.02 a 3³ filter
                on [0, 1] inputs has outputs of std ~0.05, where GELU is nearly linear, and with no norm behind it
                nothing rescales them; the He init puts them at std ~1, in GELU's nonlinear range, from step 0.
            downsample_strides: kernel = stride of the 3 downsampling layers; int, (D, H, W) or one per layer.
            norm: ``"groupnorm"`` (GroupNorm(1), default) or ``"layernorm"`` (per-voxel, as in the paper)
                or ``"batchnorm"`` (BatchNorm3d; not the paper's) or ``"channelnorm"`` (GroupNorm with one
                group per channel, MedNeXt's).
            layer_scale_init: initial layer-scale γ (1e-6 in the paper); 0 turns layer scale off (ConvNeXt V2).
            mlp_ratio: hidden width of the block MLP over its input width (4 in the paper).
            grn: Global Response Normalization after the MLP's GELU (ConvNeXt V2).
            drop_path_rate: stochastic depth, linear from 0 to this rate over all blocks.
            grad_checkpointing: recompute block activations in backward to save memory.
            block: ``"convnext"`` (the paper's block) or ``"mixer"`` (ConvMixer's layer, :class:`MixerBlock`;
                ``mlp_ratio``, ``layer_scale_init`` and ``grn`` do not apply to it).
            stem_act: GELU between the patchify conv and its norm (ConvMixer's stem: conv -> GELU -> norm).
            head_norm: LayerNorm on the pooled features before the linear head (the paper's); False: pool -> Linear
                (ConvMixer's, DenseNet's).
            global_pool: ``"avg"`` (the paper's) or ``"max"``: how the last feature map becomes one vector per
                volume (:mod:`medconvnext.layers.pooling`; max keeps a small finding's local response).
            init: ``"trunc_normal"`` (the paper's std 0.02 for every conv and linear layer) or ``"torch_default"``
                (PyTorch's own init, Kaiming-uniform with a = sqrt(5), as ConvMixer keeps): with std 0.02 a
                64 -> 256 linear layer on unit inputs gives pre-activations of std ~0.16, where GELU is nearly
                linear; PyTorch's gives ~0.58.
        """
        super().__init__()
        stages = len(depths)
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {', '.join(BLOCKS)}, got {block!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        _check_pre_stem(stem_conv_channels, stem_conv_norm, stem_conv_stride)
        if stem_conv_init not in ("trunc_normal", "kaiming"):
            raise ValueError(f"stem_conv_init must be 'trunc_normal' or 'kaiming', got {stem_conv_init!r}")
        if stem_conv_init != "trunc_normal" and not stem_conv_channels:
            raise ValueError("stem_conv_init sets the pre-stem's init: it needs stem_conv_channels > 0")
        kernels = _per_stage(kernel_size, stages, "kernel_size")
        stem = as_triple(stem_stride, "stem_stride")
        stem_kernel = stem if stem_kernel_size is None else as_triple(stem_kernel_size, "stem_kernel_size")
        if any(k < s for k, s in zip(stem_kernel, stem, strict=True)):
            raise ValueError(f"stem_kernel_size {stem_kernel} must be >= stem_stride {stem} on every axis")
        stem_padding = tuple((k - s + 1) // 2 for k, s in zip(stem_kernel, stem, strict=True))
        downs = _per_stage(downsample_strides, stages - 1, "downsample_strides")
        self.grad_checkpointing = grad_checkpointing
        self.num_classes = num_classes
        self.num_features = dims[-1]
        # channelnorm normalises each channel over D, H, W: on a 1³ map that is identically zero (and PyTorch
        # refuses it for a batch of one), so the last stage must keep 2 voxels per axis
        keep = 2 if norm == "channelnorm" else 1
        self.min_input_size: Triple = tuple(  # type: ignore[assignment]
            keep * stem_conv_stride * stem[axis] * _prod(d[axis] for d in downs) for axis in range(3)
        )

        self.pre_stem: nn.Module = nn.Identity()
        if stem_conv_channels:
            pre_norm = stem_conv_norm or norm
            self.pre_stem = nn.Sequential(
                nn.Conv3d(in_channels, stem_conv_channels, 3, stride=stem_conv_stride, padding=1),
                nn.Identity() if pre_norm == "none" else make_norm3d(pre_norm, stem_conv_channels), nn.GELU())
        self.stem = nn.Sequential(
            nn.Conv3d(stem_conv_channels or in_channels, dims[0], stem_kernel, stride=stem, padding=stem_padding),
            *((nn.GELU(),) if stem_act else ()),
            make_norm3d(norm, dims[0]),
        )
        self.downsample = nn.ModuleList(
            nn.Sequential(make_norm3d(norm, dims[i]), nn.Conv3d(dims[i], dims[i + 1], downs[i], stride=downs[i]))
            for i in range(stages - 1)
        )
        rates = drop_path_rates(drop_path_rate, depths)

        def make_block(i: int, rate: float) -> nn.Module:
            if block == "mixer":
                return MixerBlock(dims[i], kernels[i], rate, norm)
            return ConvNeXtBlock(dims[i], kernels[i], rate, layer_scale_init, norm, mlp_ratio, grn)

        self.stages = nn.ModuleList(
            nn.Sequential(*(make_block(i, rate) for rate in rates[i])) for i in range(stages)
        )
        self.head_norm = nn.LayerNorm(dims[-1], eps=1e-6) if head_norm else nn.Identity()
        self.global_pool = check_global_pool(global_pool)
        self.head_drop = nn.Dropout(head_dropout)
        self.head = nn.Linear(dims[-1], num_classes)

        if init == "trunc_normal":
            self.apply(init_weights)
        if stem_conv_init == "kaiming":
            pre_conv = self.pre_stem[0]
            nn.init.kaiming_normal_(pre_conv.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(pre_conv.bias)
        with torch.no_grad():
            self.head.weight.mul_(head_init_scale)
            self.head.bias.mul_(head_init_scale)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map of the last stage, (N, C_last, d, h, w)."""
        check_input_size(x, self.min_input_size, type(self).__name__)
        x = self.stem(self.pre_stem(x))
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = self.downsample[i - 1](x)
            for block in stage:
                if self.grad_checkpointing and x.requires_grad:
                    x = checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
        return x

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global pool (``global_pool``: average or max) over D, H, W -> LayerNorm (unless ``head_norm=False``) ->
        (dropout) -> Linear."""
        x = self.head_norm(global_pool(features, self.global_pool))
        return x if pre_logits else self.head(self.head_drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= v
    return out


def _convnext(depths: tuple[int, ...], dims: tuple[int, ...], overrides: dict) -> ConvNeXt3d:
    """A variant's depths and dims, unless the caller overrides them."""
    return ConvNeXt3d(**{"depths": depths, "dims": dims, **overrides})


@register_model("convnext")
def convnext_atto(**kwargs) -> ConvNeXt3d:
    """ConvNeXt-Atto: depths (2, 2, 6, 2), dims (40, 80, 160, 320)."""
    return _convnext((2, 2, 6, 2), (40, 80, 160, 320), kwargs)


@register_model("convnext")
def convnext_femto(**kwargs) -> ConvNeXt3d:
    """ConvNeXt-Femto: depths (2, 2, 6, 2), dims (48, 96, 192, 384)."""
    return _convnext((2, 2, 6, 2), (48, 96, 192, 384), kwargs)


@register_model("convnext")
def convnext_pico(**kwargs) -> ConvNeXt3d:
    """ConvNeXt-Pico: depths (2, 2, 6, 2), dims (64, 128, 256, 512)."""
    return _convnext((2, 2, 6, 2), (64, 128, 256, 512), kwargs)


@register_model("convnext")
def convnext_nano(**kwargs) -> ConvNeXt3d:
    """ConvNeXt-Nano: depths (2, 2, 8, 2), dims (80, 160, 320, 640)."""
    return _convnext((2, 2, 8, 2), (80, 160, 320, 640), kwargs)


@register_model("convnext")
def convnext_tiny(**kwargs) -> ConvNeXt3d:
    """ConvNeXt-Tiny: depths (3, 3, 9, 3), dims (96, 192, 384, 768)."""
    return _convnext((3, 3, 9, 3), (96, 192, 384, 768), kwargs)


@register_model("convnext")
def convnext_small(**kwargs) -> ConvNeXt3d:
    """ConvNeXt-Small: depths (3, 3, 27, 3), dims (96, 192, 384, 768)."""
    return _convnext((3, 3, 27, 3), (96, 192, 384, 768), kwargs)


@register_model("convnext")
def convnext_base(**kwargs) -> ConvNeXt3d:
    """ConvNeXt-Base: depths (3, 3, 27, 3), dims (128, 256, 512, 1024)."""
    return _convnext((3, 3, 27, 3), (128, 256, 512, 1024), kwargs)
