"""Every registered model builds, runs forward/backward at its minimum size and rejects smaller inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medconvnext.layers import LayerNorm3d, drop_path, drop_path_rates, global_pool
from medconvnext.models import (
    ConvMixer3d,
    ConvNeXt3d,
    ResNeXt3d,
    create_model,
    get_entry,
    list_models,
    model_info,
    preferred_memory_format,
)

BIG_PARAMS = 60_000_000  # above this only the forward pass runs (CPU time)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list_models())
def test_model_min_size_forward_backward_and_too_small(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, in_channels=1)
    assert model.model_args["name"] == name
    size = tuple(model.min_input_size)
    x = torch.randn(2, 1, *size)
    big = sum(p.numel() for p in model.parameters()) > BIG_PARAMS
    if big:
        with torch.no_grad():
            out = model(x)
    else:
        out = model(x)
        out.sum().backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert out.shape == (2, 3)
    assert torch.isfinite(out).all()
    too_small = torch.randn(1, 1, *size[:2], size[2] - 1)
    with pytest.raises(ValueError, match="minimum"):
        model(too_small)


def test_registry_families_and_unknown_name() -> None:
    families = {get_entry(name).family for name in list_models()}
    assert families == {"convnext", "convmixer", "resnext", "monai"}
    with pytest.raises(ValueError, match="unknown model"):
        create_model("convnext_gigantic")


def test_layernorm3d_is_per_voxel_groupnorm_is_not() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 4, 6, 6, 6) * torch.linspace(0.5, 3, 6).view(1, 1, 6, 1, 1)
    crop = (slice(None), slice(None), slice(1, 4), slice(0, 3), slice(2, 6))
    ln = LayerNorm3d(4)
    torch.testing.assert_close(ln(x[crop]), ln(x)[crop])
    gn = torch.nn.GroupNorm(1, 4, eps=1e-6)
    assert not torch.allclose(gn(x[crop]), gn(x)[crop], atol=1e-3)


def test_drop_path_schedule_and_per_sample_mask() -> None:
    rates = drop_path_rates(0.3, (2, 2, 6, 2))
    flat = [r for stage in rates for r in stage]
    assert [len(s) for s in rates] == [2, 2, 6, 2]
    assert flat[0] == 0.0 and abs(flat[-1] - 0.3) < 1e-7
    assert all(b > a for a, b in zip(flat, flat[1:], strict=False))
    model = create_model("convnext_atto", drop_path_rate=0.3)
    assert [b.drop_path.rate for stage in model.stages for b in stage] == pytest.approx(flat)
    torch.manual_seed(0)
    x = torch.ones(64, 3, 2, 2, 2)
    y = drop_path(x, 0.5, training=True)
    per_sample = y.flatten(1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert (per_sample == per_sample[:, :1]).all()  # one mask value per sample
    assert torch.equal(drop_path(x, 0.5, training=False), x)


def test_small_input_options() -> None:
    x = torch.randn(2, 1, 28, 28, 28)
    assert ConvNeXt3d(depths=(1, 1, 1, 1), dims=(8, 8, 8, 8), stem_stride=2).min_input_size == (16, 16, 16)
    assert ConvNeXt3d(depths=(1, 1, 1, 1), dims=(8, 8, 8, 8), stem_stride=1).min_input_size == (8, 8, 8)
    assert ConvNeXt3d(stem_stride=(1, 4, 4), downsample_strides=(1, 2, 2)).min_input_size == (1, 32, 32)
    assert ConvNeXt3d(depths=(1, 1, 1, 1), dims=(8, 8, 8, 8), stem_stride=2)(x).shape == (2, 2)
    small = create_model("resnext_tiny", stem="small")
    assert small.min_input_size == (8, 8, 8) and create_model("resnext_tiny").min_input_size == (32, 32, 32)
    assert small(x).shape == (2, 2)
    with pytest.raises(ValueError, match="minimum"):
        create_model("resnext_tiny")(x)


def test_overlapping_stem_keeps_the_patchify_grid() -> None:
    patchify = ConvNeXt3d(depths=(1, 1, 1, 1), dims=(8, 8, 8, 8))
    overlapping = ConvNeXt3d(depths=(1, 1, 1, 1), dims=(8, 8, 8, 8), stem_kernel_size=7)
    assert patchify.stem[0].kernel_size == (4, 4, 4) and overlapping.stem[0].kernel_size == (7, 7, 7)
    for shape in ((32, 32, 32), (28, 36, 40)):
        x = torch.randn(1, 1, *shape)
        assert overlapping.stem(x).shape == patchify.stem(x).shape
    # each stem output sees 7 input voxels per axis: a change 1 voxel outside its 4-voxel patch reaches it
    x = torch.zeros(1, 1, 32, 32, 32)
    bumped = x.clone()
    bumped[0, 0, 4, 1, 1] = 1.0  # first voxel of the second patch along D
    assert torch.equal(patchify.stem[0](x)[..., 0, 0, 0], patchify.stem[0](bumped)[..., 0, 0, 0])
    assert not torch.equal(overlapping.stem[0](x)[..., 0, 0, 0], overlapping.stem[0](bumped)[..., 0, 0, 0])
    with pytest.raises(ValueError, match="stem_kernel_size"):
        ConvNeXt3d(stem_stride=4, stem_kernel_size=3)



def test_convolutional_pre_stem_reads_the_voxels_through_a_nonlinear_filter() -> None:
    """stem_conv_channels puts a 3³ conv + norm + GELU before the patchify: same grid and minimum input, the
    patchify now sees C channels, and the stem output is no longer linear in the input."""
    plain = create_model("convnext_med_iso", num_classes=2)
    conv = create_model("convnext_med_iso", num_classes=2, stem_conv_channels=8).eval()
    assert conv.min_input_size == plain.min_input_size and conv.stem[0].in_channels == 8
    x = torch.rand(2, 1, 32, 32, 32)
    assert conv(x).shape == (2, 2) and conv.forward_features(x).shape == plain.forward_features(x).shape
    tokens = conv.stem[0](conv.pre_stem(x))  # before the stem's norm
    doubled = conv.stem[0](conv.pre_stem(2 * x))
    assert not torch.allclose(doubled - conv.stem[0].bias.view(1, -1, 1, 1, 1),
                              2 * (tokens - conv.stem[0].bias.view(1, -1, 1, 1, 1)), atol=1e-4)
    with pytest.raises(ValueError, match="stem_conv_channels must be an integer >= 0"):
        create_model("convnext_med_iso", stem_conv_channels=-1)


def test_pre_stem_without_norm_treats_each_case_alone() -> None:
    """stem_conv_norm="none": conv + GELU, so in training mode a case's pre-stem output does not depend on the
    other cases of the batch (it does with BatchNorm); asking for a pre-stem norm without a pre-stem is refused."""
    torch.manual_seed(0)
    x = torch.rand(3, 1, 16, 16, 16)
    for norm, batch_independent in (("none", True), (None, False)):
        model = create_model("convnext_med_iso", num_classes=2, stem_conv_channels=4, stem_conv_norm=norm).train()
        alone, in_batch = model.pre_stem(x[:1]), model.pre_stem(x)[:1]
        assert torch.allclose(alone, in_batch, atol=1e-6) is batch_independent
    assert isinstance(create_model("convnext_med_iso", stem_conv_channels=4, stem_conv_norm="groupnorm").pre_stem[1],
                      torch.nn.GroupNorm)
    with pytest.raises(ValueError, match="stem_conv_norm"):
        create_model("convnext_med_iso", stem_conv_norm="none")
    with pytest.raises(ValueError, match="stem_conv_norm must be one of .*none"):
        create_model("convnext_med_iso", stem_conv_channels=4, stem_conv_norm="instance")
    # wrong types are named before any layer is built (a float stride used to fail in the first forward pass)
    for args in ({"stem_conv_channels": 2.5}, {"stem_conv_channels": True}, {"stem_conv_channels": "abc"},
                 {"stem_conv_channels": 4, "stem_conv_stride": 1.5},
                 {"stem_conv_channels": 4, "stem_conv_stride": [1, 2, 2]}):
        with pytest.raises(ValueError, match=f"{list(args)[-1]} must be an integer"):
            create_model("convnext_med_iso", **args)


def test_kaiming_pre_stem_init_puts_the_gelu_in_its_nonlinear_range() -> None:
    """stem_conv_init="kaiming": on a [0, 1] mask the norm-free pre-stem's conv outputs have std near 1 at init
    (vs ~0.05 with the trunc-normal 0.02 of every other layer), so GELU is not a linear map there; the rest of the
    model keeps the paper's init; the option without a pre-stem, or an unknown init, is refused."""
    x = (torch.rand(2, 1, 32, 32, 32) > 0.5).float()
    stds = {}
    for init in ("trunc_normal", "kaiming"):
        torch.manual_seed(0)
        model = create_model("convnext_med_iso", stem_conv_channels=16, stem_conv_norm="none", stem_conv_init=init)
        stds[init] = model.pre_stem[0](x).std().item()
        assert model.stem[0].weight.std().item() < 0.03  # the patchify stem keeps std 0.02
    assert stds["trunc_normal"] < 0.1 < 0.3 < stds["kaiming"] < 3
    assert not create_model("convnext_med_iso", stem_conv_channels=4, stem_conv_init="kaiming").pre_stem[0].bias.any()
    with pytest.raises(ValueError, match="stem_conv_init sets the pre-stem"):
        create_model("convnext_med_iso", stem_conv_init="kaiming")
    with pytest.raises(ValueError, match="stem_conv_init must be"):
        create_model("convnext_med_iso", stem_conv_channels=4, stem_conv_init="xavier")


def test_strided_pre_stem_halves_the_grid_before_the_patchify() -> None:
    """stem_conv_stride=2 with a 4³ patchify gives the 8³ token grid of an 8³ patchify on 64³ (total stride 8,
    minimum input 8³), reading the 1 mm voxels through 3³ filters; a stride without a pre-stem is refused."""
    strided = create_model("convnext_med_iso", num_classes=2, stem_conv_channels=4, stem_conv_stride=2)
    p8 = create_model("convnext_med_iso_p8", num_classes=2)
    assert strided.min_input_size == p8.min_input_size == (8, 8, 8)
    x = torch.rand(2, 1, 64, 64, 64)
    assert strided.pre_stem(x).shape == (2, 4, 32, 32, 32)
    assert strided.forward_features(x).shape == p8.forward_features(x).shape == (2, 64, 8, 8, 8)
    with pytest.raises(ValueError, match="stem_conv_stride"):
        create_model("convnext_med_iso", stem_conv_stride=2)
    with pytest.raises(ValueError, match="stem_conv_stride must be an integer >= 1"):
        create_model("convnext_med_iso", stem_conv_channels=4, stem_conv_stride=0)


def _clone_grads(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad()
    model(x).square().sum().backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize(
    "build",
    [
        lambda ckpt: ConvNeXt3d(
            depths=(1, 2, 1, 1), dims=(8, 16, 16, 16), stem_stride=2, layer_scale_init=1.0, grad_checkpointing=ckpt
        ),
        lambda ckpt: ConvMixer3d(dim=16, depth=3, patch_size=4, kernel_size=3, grad_checkpointing=ckpt),
        lambda ckpt: ResNeXt3d(
            layers=(1, 2, 1, 1), groups=4, width_per_group=4, base_planes=16, stem="small", grad_checkpointing=ckpt
        ),
    ],
    ids=["convnext", "convmixer", "resnext"],
)
def test_grad_checkpointing_matches_plain(build) -> None:
    torch.manual_seed(0)
    plain = build(False)
    ckpt = build(True)
    ckpt.load_state_dict(plain.state_dict())
    for model in (plain, ckpt):
        model.eval()  # BatchNorm running statistics would otherwise be updated twice by recomputation
    x = torch.randn(2, 1, 16, 16, 16)
    for a, b in zip(_clone_grads(plain, x), _clone_grads(ckpt, x), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_channels_last_3d_same_output() -> None:
    torch.manual_seed(0)
    model = create_model("convnext_atto", norm="layernorm").eval()
    fmt = preferred_memory_format(model, "cpu")
    assert fmt == torch.channels_last_3d
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        expected = model(x)
        got = model.to(memory_format=fmt)(x.contiguous(memory_format=fmt))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_model_info_counts() -> None:
    info = model_info("convnext_atto", (32, 32, 32))
    assert info["family"] == "convnext" and info["min_input_size"] == [32, 32, 32]
    assert info["params"] == sum(p.numel() for p in create_model("convnext_atto").parameters())
    assert info["gflops"] > 0 and info["gmacs"] == pytest.approx(info["gflops"] / 2)
    assert model_info("convnext_atto", 16)["gflops"] is None


def test_depthwise_conv3d_fast_backward_matches_conv3d() -> None:
    from medconvnext.models._dwconv import DepthwiseConv3d

    torch.manual_seed(0)
    for kernel, size, fmt in [
        ((7, 7, 7), (5, 6, 7), torch.channels_last_3d),
        ((1, 7, 7), (2, 9, 9), torch.contiguous_format),
    ]:
        fast = DepthwiseConv3d(4, kernel).double()
        ref = torch.nn.Conv3d(4, 4, kernel, padding=tuple(k // 2 for k in kernel), groups=4).double()
        ref.load_state_dict(fast.state_dict())
        x = torch.randn(2, 4, *size, dtype=torch.double).contiguous(memory_format=fmt).requires_grad_()
        g = torch.randn(2, 4, *size, dtype=torch.double)
        got = torch.autograd.grad((fast(x) * g).sum(), (x, fast.weight, fast.bias))
        expected = torch.autograd.grad((ref(x) * g).sum(), (x, ref.weight, ref.bias))
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b)


def test_convnext_batchnorm_normalises_across_the_batch() -> None:
    torch.manual_seed(0)
    model = create_model("convnext_atto", norm="batchnorm")
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())
    x = torch.randn(2, 1, 32, 32, 32)
    model.train()
    alone = model(x[:1].repeat(2, 1, 1, 1, 1))[0]
    together = model(x)[0]
    assert not torch.allclose(alone, together)  # a case's output depends on its batch in training
    model.eval()
    with torch.no_grad():  # and not at inference (running statistics)
        torch.testing.assert_close(model(x[:1]), model(x)[:1], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="norm must be one of"):
        create_model("convnext_atto", norm="instancenorm")


def test_channelnorm_normalises_each_channel_of_each_case() -> None:
    model = create_model("convnext_atto", norm="channelnorm")
    assert tuple(model.min_input_size) == (64, 64, 64)  # 2 voxels per axis left in the last stage
    with pytest.raises(ValueError, match="minimum"):
        model(torch.randn(1, 1, 32, 32, 32))
    norm = model.stem[1]
    assert isinstance(norm, torch.nn.GroupNorm) and norm.num_groups == norm.num_channels == 40
    x = torch.randn(2, 40, 4, 4, 4) * torch.arange(1, 41).view(1, 40, 1, 1, 1) + 3
    with torch.no_grad():
        y = norm(x)
    torch.testing.assert_close(y.mean(dim=(2, 3, 4)), torch.zeros(2, 40), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(dim=(2, 3, 4), unbiased=False), torch.ones(2, 40), atol=1e-3, rtol=0)


def test_grn_starts_as_identity_and_follows_convnext_v2() -> None:
    from medconvnext.layers import GRN3d

    grn = GRN3d(6)
    x = torch.randn(2, 3, 4, 5, 6)  # channels-last (N, D, H, W, C)
    torch.testing.assert_close(grn(x), x)  # gamma = beta = 0
    with torch.no_grad():
        grn.gamma.fill_(1.0)
        grn.beta.fill_(0.5)
    g = x.pow(2).sum(dim=(1, 2, 3), keepdim=True).sqrt()  # ConvNeXt-V2 models/utils.py, in 3D
    expected = x * (g / (g.mean(dim=-1, keepdim=True) + 1e-6)) + 0.5 + x
    torch.testing.assert_close(grn(x), expected)
    model = create_model("convnext_atto", grn=True, layer_scale_init=0.0, mlp_ratio=2)
    block = model.stages[0][0]
    assert isinstance(block.grn, GRN3d) and block.gamma is None and block.pwconv1.out_features == 80
    assert model(torch.randn(2, 1, 32, 32, 32)).shape == (2, 2)


def test_medical_convnext_is_atto_with_batchnorm_and_3_kernels() -> None:
    med = create_model("convnext_med_atto")
    atto = create_model("convnext_atto", norm="batchnorm", kernel_size=3)
    assert isinstance(med.stem[1], torch.nn.BatchNorm3d) and not any(isinstance(m, torch.nn.GroupNorm)
                                                                     for m in med.modules())
    assert {k: v.shape for k, v in med.state_dict().items()} == {k: v.shape for k, v in atto.state_dict().items()}
    assert tuple(med.min_input_size) == (32, 32, 32)
    assert tuple(med.stages[0][0].dwconv.kernel_size) == (3, 3, 3)
    # an override still wins (e.g. one more stage of resolution for 28-32³ inputs)
    assert tuple(create_model("convnext_med_atto", stem_stride=2).min_input_size) == (16, 16, 16)


def test_isotropic_medical_convnext_keeps_one_resolution() -> None:
    model = create_model("convnext_med_iso")
    assert len(model.stages) == 1 and len(model.downsample) == 0 and tuple(model.min_input_size) == (4, 4, 4)
    assert isinstance(model.stem[1], torch.nn.BatchNorm3d)
    assert torch.equal(model.stages[0][0].gamma.detach(), torch.ones(64))
    with torch.no_grad():
        assert model.eval().forward_features(torch.randn(2, 1, 32, 32, 32)).shape == (2, 64, 8, 8, 8)
        # the 8³-stem variant keeps the same 8³ token grid on a 64³ input, with the same blocks
        p8 = create_model("convnext_med_iso_p8").eval()
        assert tuple(p8.min_input_size) == (8, 8, 8)
        assert p8.forward_features(torch.randn(2, 1, 64, 64, 64)).shape == (2, 64, 8, 8, 8)
    shapes = {k: v.shape for k, v in p8.state_dict().items() if not k.startswith("stem.0")}
    assert shapes == {k: v.shape for k, v in model.state_dict().items() if not k.startswith("stem.0")}


def test_prestem_medical_convnext_is_the_isotropic_one_with_a_he_initialised_norm_free_pre_stem() -> None:
    model = create_model("convnext_med_iso_prestem", num_classes=2)
    plain = create_model("convnext_med_iso", num_classes=2)
    conv, norm, act = model.pre_stem
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride) == (1, 16, (3, 3, 3), (1, 1, 1))
    assert isinstance(norm, torch.nn.Identity) and isinstance(act, torch.nn.GELU) and not conv.bias.any()
    assert 0.22 < float(conv.weight.std()) < 0.33  # He: sqrt(2 / fan-in 27) = 0.27; the paper's init: 0.02
    assert model.min_input_size == plain.min_input_size == (4, 4, 4)
    with torch.no_grad():
        assert model.eval().forward_features(torch.rand(2, 1, 32, 32, 32)).shape == (2, 64, 8, 8, 8)
    body = {k: v.shape for k, v in model.state_dict().items() if not k.startswith(("pre_stem", "stem.0"))}
    assert body == {k: v.shape for k, v in plain.state_dict().items() if not k.startswith("stem.0")}
    assert create_model("convnext_med_iso_prestem", stem_conv_channels=32).pre_stem[0].out_channels == 32


def test_mixer_medical_convnext_is_the_prestem_one_with_convmixer_blocks_and_torch_init() -> None:
    from medconvnext.models.convnext import MixerBlock

    model = create_model("convnext_med_iso_mixer", num_classes=2)
    assert len(model.stages[0]) == 4 and all(isinstance(b, MixerBlock) for b in model.stages[0])
    assert model.pre_stem[0].out_channels == 16 and model.min_input_size == (4, 4, 4)
    dwconv = model.stages[0][0].dwconv
    assert dwconv.weight.shape[-3:] == (5, 5, 5) and dwconv.weight.std().item() > 0.05  # not trunc-normal(0.02)
    with torch.no_grad():
        assert model.eval().forward_features(torch.rand(2, 1, 32, 32, 32)).shape == (2, 64, 8, 8, 8)
        assert model(torch.rand(1, 1, 4, 4, 4)).shape == (1, 2)  # the minimum input
    with pytest.raises(ValueError):
        model(torch.rand(1, 1, 3, 4, 4))


def test_vessel_diagnosis_options_change_what_they_name() -> None:
    """block=mixer, stem_act, head_norm=False and init=torch_default: the ConvMixer traits, one at a time."""
    from medconvnext.models.convnext import ConvNeXtBlock, MixerBlock

    base = create_model("convnext_med_iso")
    mixer = create_model("convnext_med_iso", block="mixer")
    assert all(isinstance(b, ConvNeXtBlock) for b in base.stages[0])
    assert all(isinstance(b, MixerBlock) for b in mixer.stages[0])
    assert isinstance(create_model("convnext_med_iso", stem_act=True).stem[1], nn.GELU)
    assert isinstance(create_model("convnext_med_iso", head_norm=False).head_norm, nn.Identity)
    torch.manual_seed(0)
    paper = create_model("convnext_med_iso").stages[0][0].pwconv1.weight
    torch.manual_seed(0)
    default = create_model("convnext_med_iso", init="torch_default").stages[0][0].pwconv1.weight
    assert paper.std().item() < 0.021 and default.std().item() > 0.05  # U(±1/sqrt(64)) has std 0.072
    x = torch.rand(2, 1, 16, 16, 16)
    for model in (mixer, create_model("convnext_med_iso", stem_act=True, head_norm=False, init="torch_default")):
        out = model(x)
        out.sum().backward()
        assert out.shape == (2, 2) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="block must be one of convnext, mixer"):
        create_model("convnext_med_iso", block="resnet")
    with pytest.raises(ValueError, match="init must be one of"):
        create_model("convnext_med_iso", init="xavier")


@pytest.mark.parametrize("name", ["convnext_med_iso", "convmixer_128_4", "resnext_tiny"])
def test_global_max_pool_keeps_one_voxel_response_that_the_average_dilutes(name: str) -> None:
    """``global_pool="max"`` (a small finding in a patch): the pooled features are the map's maxima, so one
    strong cell is read at full strength where the average divides it by the map's size."""
    torch.manual_seed(0)
    avg = create_model(name, global_pool="avg").eval()
    peak = create_model(name, global_pool="max").eval()
    peak.load_state_dict(avg.state_dict())  # pooling has no weights: the same network
    features = 0.1 * torch.randn(1, avg.num_features, 4, 4, 4)  # a background...
    features[0, : avg.num_features // 2, 1, 2, 3] = 8.0  # ...and one cell where half the channels respond
    norm = getattr(avg, "head_norm", nn.Identity())
    with torch.no_grad():
        pooled_max, pooled_avg = peak.forward_head(features, pre_logits=True), avg.forward_head(features, True)
        torch.testing.assert_close(pooled_max, norm(features.amax(dim=(2, 3, 4))))
        torch.testing.assert_close(pooled_avg, norm(features.mean(dim=(2, 3, 4))))
    assert not torch.allclose(pooled_max, pooled_avg)
    half = avg.num_features // 2  # the pooling itself: the cell at full strength, or divided by the 4³ map
    assert torch.equal(global_pool(features, "max")[0, :half], torch.full((half,), 8.0))
    assert float(global_pool(features, "avg")[0, :half].mean()) < 8.0 / 64 + 0.05
    assert peak.model_args["global_pool"] == "max"
    with pytest.raises(ValueError, match="global_pool"):
        create_model(name, global_pool="gem")
