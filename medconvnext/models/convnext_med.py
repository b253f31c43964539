"""The medical ConvNeXts: the paper's ConvNeXt (:mod:`medconvnext.models.convnext`) adapted to small volumes
(28-64³) and small cohorts (about 1,000 cases), each change measured on AdrenalMNIST3D and VesselMNIST3D
(docs/benchmarks.md, "ConvNeXt design study" and "VesselMNIST3D").
"""

from __future__ import annotations

from medconvnext.models._registry import register_model
from medconvnext.models.convnext import ConvNeXt3d, _convnext

# The medical ConvNeXt: what the AdrenalMNIST3D design study (docs/benchmarks.md, "ConvNeXt design study")
# measured to help at small volumes (28-64³) and small data (~1,200 cases):
# - BatchNorm3d in place of GroupNorm(1)/LayerNorm: +0.027 test AUC over convnext_atto (0.811 ± 0.009 vs
#   0.784 ± 0.015, 3 seeds); batch statistics make each volume's features relative to the batch, where
#   GroupNorm(1) normalises a sparse volume on its own. Needs batches of about 8 or more.
# - 3³ depthwise kernels: a 7³ kernel on the 8³/4³/2³/1³ maps of a 32³ input reads zero padding for 52/81/98/100 %
#   of its taps (bench/convnext_anatomy.py); 3³ gives the same accuracy at a third of the step time.
# Everything else is the paper's (stem, stages, layer scale, head); stem_stride=2 (one more stage of resolution)
# scored the same within the seeds' spread at 6x the cost.
MEDICAL_ARGS = {"norm": "batchnorm", "kernel_size": 3}


@register_model("convnext")
def convnext_med_atto(**kwargs) -> ConvNeXt3d:
    """Medical ConvNeXt-Atto: ConvNeXt-Atto with BatchNorm and 3³ depthwise kernels (for small volumes)."""
    return _convnext((2, 2, 6, 2), (40, 80, 160, 320), {**MEDICAL_ARGS, **kwargs})


@register_model("convnext")
def convnext_med_femto(**kwargs) -> ConvNeXt3d:
    """Medical ConvNeXt-Femto: ConvNeXt-Femto with BatchNorm and 3³ depthwise kernels (for small volumes)."""
    return _convnext((2, 2, 6, 2), (48, 96, 192, 384), {**MEDICAL_ARGS, **kwargs})


@register_model("convnext")
def convnext_med_pico(**kwargs) -> ConvNeXt3d:
    """Medical ConvNeXt-Pico: ConvNeXt-Pico with BatchNorm and 3³ depthwise kernels (for small volumes)."""
    return _convnext((2, 2, 6, 2), (64, 128, 256, 512), {**MEDICAL_ARGS, **kwargs})


@register_model("convnext")
def convnext_med_iso(**kwargs) -> ConvNeXt3d:
    """Isotropic medical ConvNeXt: the paper's isotropic design (facebookresearch/ConvNeXt
    ``convnext_isotropic.py``: a patchify stem, then every block at one resolution, no downsampling), small:
    4 blocks of 64 channels after a 4³ patchify stem, BatchNorm, 5³ depthwise kernels, layer scale starting at 1.

    Why (AdrenalMNIST3D design study, docs/benchmarks.md): at 28-32³ the hierarchical ConvNeXt's last stages see
    2³ and 1³ maps; one stage at 8³ keeps every block spatial, as ConvMixer does. With the paper's layer scale of
    1e-6 four blocks stay near identity for most of a short run (train loss 0.455 after 15 epochs, test AUC 0.68);
    starting it at 1 lets them learn from the first step. Minimum input 4³ (the stem).
    """
    args = {"depths": (4,), "dims": (64,), "norm": "batchnorm", "kernel_size": 5, "layer_scale_init": 1.0}
    return ConvNeXt3d(**{**args, **kwargs})


@register_model("convnext")
def convnext_med_iso_prestem(**kwargs) -> ConvNeXt3d:
    """``convnext_med_iso`` with a 3³ convolution and GELU at full resolution before its 4³ patchify stem
    (16 channels, no norm, He init): ``stem_conv_channels=16, stem_conv_norm="none", stem_conv_init="kaiming"``.

    Why (AdrenalMNIST3D, masks resampled with their partial volumes, docs/benchmarks.md): the patchify stem is a
    linear map of each 4³ patch, so the blocks never see a nonlinear reading of single voxels, as CNN stems give;
    with the pre-stem the test AUC goes from 0.844 ± 0.047 to 0.884 ± 0.005 (5 seeds). No norm: a BatchNorm there
    rescales each volume's boundary values by batch statistics (0.878 ± 0.009 with one). He init (He et al. 2015)
    instead of the paper's std 0.02: with no norm behind it, std 0.02 leaves the GELU linear for most of a short
    run (validation AUC 0.804 against 0.853). FCMAE pretrains it (``medconvnext pretrain``). Minimum input 4³.
    """
    args = {"stem_conv_channels": 16, "stem_conv_norm": "none", "stem_conv_init": "kaiming"}
    return convnext_med_iso(**{**args, **kwargs})


@register_model("convnext")
def convnext_med_iso_p8(**kwargs) -> ConvNeXt3d:
    """``convnext_med_iso`` with an 8³ patchify stem, for inputs of about 64³ (e.g. 64 mm at 1 mm voxels).

    Why: the stem learns its own linear map of each 8³ patch (512 voxels) to 64 channels, so the blocks keep the
    8³ token grid, and the cost, of ``convnext_med_iso`` at 32³ while the input keeps twice the resolution.
    AdrenalMNIST3D (docs/benchmarks.md): 0.868 ± 0.009 test AUC on the 64³ file (3 seeds) against 0.839 ± 0.009
    for ``convnext_med_iso`` on the 28³ file; the 8³ stem of the hierarchical ``convnext_atto`` did not gain
    (0.745, z-score, 1 seed). Minimum input 8³.
    """
    return convnext_med_iso(**{"stem_stride": 8, **kwargs})



@register_model("convnext")
def convnext_med_iso_mixer(**kwargs) -> ConvNeXt3d:
    """``convnext_med_iso_prestem`` with ConvMixer's layer as its block and PyTorch's default init:
    ``block="mixer", init="torch_default"``. The macro design stays the medical ConvNeXt's (pre-stem, 4³ patchify
    stem, one isotropic stage of 4 blocks at 64 channels, pooled LayerNorm head); each block becomes
    ``x + BN(GELU(dwconv5³(x)))`` then ``BN(GELU(pwconv(x)))`` (Trockman & Kolter 2022, ``MixerBlock``).

    Why (the VesselMNIST3D diagnosis, docs/benchmarks.md): the paper's block, trained for 15 epochs on ~1,300
    masks, barely lowers the training loss (its blocks start as a near-identity linear map under the paper's
    init, and PyTorch's init only recovers part of it), while the same macro with ConvMixer's block fits and
    generalises on both MedMNIST 3D datasets. Not for FCMAE pretraining (the pre-stem). Minimum input 4³.
    """
    return convnext_med_iso_prestem(**{"block": "mixer", "init": "torch_default", **kwargs})
