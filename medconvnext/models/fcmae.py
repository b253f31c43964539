"""3D FCMAE: masked-autoencoder pretraining of a ConvNeXt encoder (ConvNeXt V2, Woo et al. 2023).

After facebookresearch/ConvNeXt-V2 ``models/fcmae.py``, in 3D and with the sparse convolution emulated
densely, as the paper describes: the binary mask is applied to the input and re-applied after the pre-stem (a 3³
conv before the patchify stem, when the model has one), the stem, each depthwise convolution and each downsampling,
so masked positions stay empty through the encoder. The norms
compute their statistics over the visible positions only (the paper's sparse LayerNorm / BatchNorm; for
GroupNorm(1) and one group per channel the same rule), so a masked voxel cannot reach a visible one.

Masking unit: ``mask_unit`` voxels per axis (default 8, the resolution after the first downsampling of the
paper's stride-4 stem). ConvNeXt V2 masks at the last stage's cell (32 px), which for a 32³ volume would be
one cell, the whole input; 8³ units give a 4³ grid (64 units) there, and 16³ units on a 128³ volume.
Where a feature map is coarser than the grid, a cell is visible when any unit inside it is.

Decoder (light, as in the paper): a 1×1×1 projection of the last stage to ``decoder_dim`` channels, upsampled
to the mask grid, a learned mask token added at masked units, one ConvNeXt block, and a 1×1×1 prediction of
the ``mask_unit``³ voxels of each unit. Loss: mean squared error over the voxels of masked units only,
optionally against per-unit normalised targets (``norm_target``, the paper's ``norm_pix_loss``), or, for inputs
in [0, 1] such as binary masks, binary cross-entropy on logits (``loss="bce"``). Why BCE there: on masks whose
foreground is a few percent of the voxels, MSE is minimised cheaply by predicting every masked unit empty (seen on
AdrenalMNIST3D); the log loss keeps a large gradient on the foreground voxels the encoder must infer.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medconvnext.choices import ReconstructionLoss, choices
from medconvnext.layers import LayerNorm3d, as_triple
from medconvnext.layers.shapes import Triple
from medconvnext.models.convnext import ConvNeXt3d, ConvNeXtBlock, MixerBlock


def random_mask(batch: int, grid: Triple, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """(N, 1, gd, gh, gw) float mask, 1 = masked; exactly ``round(ratio * units)`` masked units per case."""
    units = grid[0] * grid[1] * grid[2]
    masked = min(units - 1, max(1, round(ratio * units)))
    noise = torch.rand(batch, units, generator=generator)
    order = noise.argsort(dim=1)
    mask = torch.zeros(batch, units)
    mask.scatter_(1, order[:, :masked], 1.0)
    return mask.view(batch, 1, *grid)


def mask_at(visible: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """``visible`` (N, 1, grid) resized to a feature map of ``size``: repeated where finer, any-visible where
    coarser (max over the units a cell covers)."""
    if tuple(visible.shape[2:]) == tuple(size):
        return visible
    fine = tuple(max(s, g) for s, g in zip(size, visible.shape[2:], strict=True))
    up = F.interpolate(visible, size=fine, mode="nearest") if fine != tuple(visible.shape[2:]) else visible
    return up if fine == tuple(size) else F.adaptive_max_pool3d(up, size)


def masked_norm(norm: nn.Module, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """``norm`` applied with statistics over the visible positions only; masked positions come out zero.

    ``visible`` is (N, 1, D, H, W) at ``x``'s resolution. LayerNorm3d is per voxel, so exact as it is.
    """
    if isinstance(norm, LayerNorm3d):
        return norm(x) * visible
    if isinstance(norm, nn.GroupNorm):
        n, c = x.shape[:2]
        g = norm.num_groups
        xg = x.view(n, g, c // g, *x.shape[2:])
        m = visible.unsqueeze(1)  # (N, 1, 1, D, H, W)
        count = (m.sum(dim=(2, 3, 4, 5), keepdim=True) * (c // g)).clamp_min(1.0)
        mean = (xg * m).sum(dim=(2, 3, 4, 5), keepdim=True) / count
        var = (((xg - mean) * m) ** 2).sum(dim=(2, 3, 4, 5), keepdim=True) / count
        y = ((xg - mean) / torch.sqrt(var + norm.eps)).view_as(x)
        return (y * norm.weight.view(1, c, 1, 1, 1) + norm.bias.view(1, c, 1, 1, 1)) * visible
    if isinstance(norm, nn.BatchNorm3d):
        count = visible.sum().clamp_min(1.0)
        mean = (x * visible).sum(dim=(0, 2, 3, 4), keepdim=True) / count
        var = (((x - mean) * visible) ** 2).sum(dim=(0, 2, 3, 4), keepdim=True) / count
        y = (x - mean) / torch.sqrt(var + norm.eps)
        c = x.shape[1]
        return (y * norm.weight.view(1, c, 1, 1, 1) + norm.bias.view(1, c, 1, 1, 1)) * visible
    raise TypeError(f"no masked version of {type(norm).__name__}")


def _masked_block(block: ConvNeXtBlock, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """One ConvNeXt block with the mask re-applied after the depthwise conv (sparse-conv emulation)."""
    h = masked_norm(block.norm, block.dwconv(x) * visible, visible)
    h = h.permute(0, 2, 3, 4, 1)
    h = block.act(block.pwconv1(h)) * visible.permute(0, 2, 3, 4, 1)  # GRN then sees visible positions only
    h = block.pwconv2(block.grn(h))
    if block.gamma is not None:
        h = h * block.gamma
    h = h.permute(0, 4, 1, 2, 3)
    return (x + block.drop_path(h)) * visible


def _masked_mixer_block(block: MixerBlock, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """ConvMixer's layer with the mask re-applied after each conv (norms over visible positions only)."""
    h = masked_norm(block.norm, block.act(block.dwconv(x) * visible), visible)
    x = (x + block.drop_path(h)) * visible
    return masked_norm(block.norm2, block.act(block.pwconv(x)) * visible, visible)


def _masked_pre_stem(pre_stem: nn.Module, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """The pre-stem (3³ conv, norm or none, GELU) as a sparse conv: the input is already masked, so a visible
    voxel next to a masked unit reads zeros there, as a submanifold sparse conv would; the output is re-masked so
    the conv's spill into masked units cannot reach the stem."""
    conv, norm, act = pre_stem[0], pre_stem[1], pre_stem[2]
    x = conv(x)
    m = mask_at(visible, tuple(x.shape[2:]))
    x = x * m if isinstance(norm, nn.Identity) else masked_norm(norm, x * m, m)
    return act(x) * m


def masked_forward_features(encoder: ConvNeXt3d, x: torch.Tensor, visible: torch.Tensor) -> list[torch.Tensor]:
    """Feature map of every stage, with masked positions held at zero; ``visible`` (N, 1, grid), 1 = visible."""
    x = x * mask_at(visible, tuple(x.shape[2:]))
    if not isinstance(encoder.pre_stem, nn.Identity):
        x = _masked_pre_stem(encoder.pre_stem, x, visible)
    conv, norm = encoder.stem[0], encoder.stem[-1]  # stem: conv [-> GELU] -> norm
    x = conv(x)
    if len(encoder.stem) == 3:
        x = encoder.stem[1](x)
    m = mask_at(visible, tuple(x.shape[2:]))
    x = masked_norm(norm, x * m, m)
    features = []
    for i, stage in enumerate(encoder.stages):
        if i > 0:
            down_norm, down_conv = encoder.downsample[i - 1][0], encoder.downsample[i - 1][1]
            x = down_conv(masked_norm(down_norm, x, m))
            m = mask_at(visible, tuple(x.shape[2:]))
            x = x * m
        for block in stage:
            x = _masked_mixer_block(block, x, m) if isinstance(block, MixerBlock) else _masked_block(block, x, m)
        features.append(x)
    return features


def patchify(x: torch.Tensor, unit: Triple) -> torch.Tensor:
    """(N, C, D, H, W) -> (N, L, C·ud·uh·uw): the voxels of each mask unit, units in grid (C order)."""
    n, c, d, h, w = x.shape
    ud, uh, uw = unit
    x = x.view(n, c, d // ud, ud, h // uh, uh, w // uw, uw)
    return x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(n, (d // ud) * (h // uh) * (w // uw), c * ud * uh * uw)


def masked_patch_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                      loss: ReconstructionLoss = "mse") -> torch.Tensor:
    """Loss per unit, averaged over masked units only; pred/target (N, L, P), mask (N, L).

    ``mse``: mean squared error of the voxels. ``bce``: binary cross-entropy of ``pred`` as logits against
    ``target`` in [0, 1] (ValueError otherwise: a probability target outside [0, 1] is garbage).
    """
    if loss == "bce":
        if bool((target < 0).any() or (target > 1).any()):
            raise ValueError("loss 'bce' needs inputs in [0, 1] (e.g. masks with intensity minmax); "
                             f"got values in [{float(target.min()):.3g}, {float(target.max()):.3g}]")
        per_voxel = F.binary_cross_entropy_with_logits(pred.float(), target.float(), reduction="none")
    else:
        per_voxel = (pred - target) ** 2
    per_unit = per_voxel.mean(dim=-1)
    return (per_unit * mask).sum() / mask.sum().clamp_min(1.0)


def _pre_stem_stride(encoder: ConvNeXt3d) -> tuple[int, int, int]:
    """Stride of the pre-stem's conv per axis; (1, 1, 1) without a pre-stem."""
    if isinstance(encoder.pre_stem, nn.Identity):
        return (1, 1, 1)
    return tuple(encoder.pre_stem[0].stride)  # type: ignore[return-value]


class FCMAE3d(nn.Module):
    """ConvNeXt encoder + light decoder for masked reconstruction of (N, C, D, H, W) volumes."""

    def __init__(
        self,
        encoder: ConvNeXt3d,
        mask_unit: int | tuple[int, int, int] = 8,
        mask_ratio: float = 0.6,
        decoder_dim: int = 128,
        norm_target: bool = False,
        loss: ReconstructionLoss = "mse",
    ) -> None:
        """
        Args:
            encoder: the ConvNeXt to pretrain (its head is not used).
            mask_unit: masking unit in voxels per axis; a multiple of the stem stride.
            mask_ratio: share of units masked per case (0.6 in the paper).
            decoder_dim: channels of the decoder (512 in the paper for 224² images; small volumes need less).
            norm_target: reconstruct per-unit normalised voxels (the paper's ``norm_pix_loss``).
            loss: ``mse`` (the paper's) or ``bce`` (``pred`` are logits; inputs in [0, 1], e.g. masks).
        Raises:
            ValueError: ``mask_unit`` not a multiple of the stem stride (times the pre-stem's stride),
                ``mask_ratio`` outside (0, 1), an unknown ``loss``, or ``bce`` with ``norm_target`` (normalised
                targets are not probabilities).
        """
        super().__init__()
        self.encoder = encoder
        self.mask_unit: Triple = as_triple(mask_unit, "mask_unit")
        stem = tuple(s * p for s, p in zip(encoder.stem[0].stride, _pre_stem_stride(encoder), strict=True))
        if any(u % s for u, s in zip(self.mask_unit, stem, strict=True)):
            raise ValueError(f"mask_unit {self.mask_unit} must be a multiple of the stem stride {stem}")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if loss not in choices(ReconstructionLoss):
            raise ValueError(f"loss must be {' or '.join(map(repr, choices(ReconstructionLoss)))}, got {loss!r}")
        if loss == "bce" and norm_target:
            raise ValueError("loss 'bce' reconstructs probabilities; it cannot be combined with norm_target")
        self.mask_ratio = mask_ratio
        self.norm_target = norm_target
        self.loss = loss
        first = encoder.stem[0] if isinstance(encoder.pre_stem, nn.Identity) else encoder.pre_stem[0]
        in_channels = first.in_channels
        self.proj = nn.Conv3d(encoder.num_features, decoder_dim, 1)
        self.mask_token = nn.Parameter(torch.zeros(1, decoder_dim, 1, 1, 1))
        self.decoder = ConvNeXtBlock(decoder_dim, (3, 3, 3), layer_scale_init=1.0, norm="layernorm")
        self.pred = nn.Conv3d(decoder_dim, in_channels * self.mask_unit[0] * self.mask_unit[1] * self.mask_unit[2], 1)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def grid(self, size: tuple[int, ...]) -> Triple:
        """Mask grid of an input of ``size`` voxels; ValueError unless ``mask_unit`` divides it."""
        if any(s % u for s, u in zip(size, self.mask_unit, strict=True)):
            raise ValueError(f"input size {tuple(size)} is not a multiple of mask_unit {self.mask_unit}")
        return tuple(s // u for s, u in zip(size, self.mask_unit, strict=True))  # type: ignore[return-value]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> dict[str, Any]:
        """Masked reconstruction of ``x`` (N, C, D, H, W).

        Returns ``loss`` (scalar), ``pred`` and ``target`` (N, L, C·unit voxels) and ``mask`` (N, 1, grid),
        1 = masked. ``mask`` may be given (e.g. in tests); otherwise drawn with ``generator``.
        """
        grid = self.grid(tuple(x.shape[2:]))
        if mask is None:
            mask = random_mask(x.shape[0], grid, self.mask_ratio, generator).to(x.device, x.dtype)
        visible = 1.0 - mask
        features = masked_forward_features(self.encoder, x, visible)[-1]
        h = F.interpolate(self.proj(features), size=grid, mode="nearest")
        h = self.decoder(h + self.mask_token * mask)
        pred = self.pred(h).permute(0, 2, 3, 4, 1).reshape(x.shape[0], -1, self.pred.out_channels)
        target = patchify(x, self.mask_unit)
        if self.norm_target:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        # pred's channels are (C, ud, uh, uw) in the order patchify uses
        loss = masked_patch_loss(pred, target, mask.flatten(1), self.loss)
        return {"loss": loss, "pred": pred, "target": target, "mask": mask}

    def reconstruct(self, pred: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        """Inverse of :func:`patchify`: (N, L, C·unit voxels) -> (N, C, D, H, W) (unnormalised targets;
        probabilities for ``loss="bce"``)."""
        if self.loss == "bce":
            pred = torch.sigmoid(pred)
        n = pred.shape[0]
        ud, uh, uw = self.mask_unit
        gd, gh, gw = self.grid(size)
        c = pred.shape[-1] // (ud * uh * uw)
        x = pred.view(n, gd, gh, gw, c, ud, uh, uw).permute(0, 4, 1, 5, 2, 6, 3, 7)
        return x.reshape(n, c, gd * ud, gh * uh, gw * uw)
