"""2D -> 3D inflation: a 2D ConvNeXt (facebookresearch numerics, written here) and its inflated 3D twin agree."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medconvnext.errors import UserError
from medconvnext.models import ConvNeXt3d, load_2d_weights, load_2d_weights_file
from medconvnext.models.inflate import adapt_input_channels, inflate_kernel

DEPTHS, DIMS = (1, 1, 2, 1), (8, 16, 24, 32)


class LayerNorm2d(nn.Module):
    """facebookresearch ConvNeXt LayerNorm, data_format="channels_first"."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.zeros(dim)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class Block2d(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1, self.pwconv2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt2d(nn.Module):
    """facebookresearch/ConvNeXt ``models/convnext.py`` structure and names, tiny widths."""

    def __init__(self, in_chans: int = 3, num_classes: int = 5) -> None:
        super().__init__()
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(in_chans, DIMS[0], 4, stride=4), LayerNorm2d(DIMS[0]))]
            + [nn.Sequential(LayerNorm2d(DIMS[i]), nn.Conv2d(DIMS[i], DIMS[i + 1], 2, stride=2)) for i in range(3)]
        )
        self.stages = nn.ModuleList(nn.Sequential(*(Block2d(DIMS[i]) for _ in range(DEPTHS[i]))) for i in range(4))
        self.norm = nn.LayerNorm(DIMS[-1], eps=1e-6)
        self.head = nn.Linear(DIMS[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for down, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(down(x))
        return self.head(self.norm(x.mean((-2, -1))))


def _random_2d(in_chans: int = 3, num_classes: int = 5) -> ConvNeXt2d:
    torch.manual_seed(0)
    model = ConvNeXt2d(in_chans, num_classes).eval()
    with torch.no_grad():
        for p in model.parameters():  # random norms and layer scales too, so every weight matters
            p.copy_(torch.randn_like(p) * 0.3)
    return model


def _to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename facebookresearch keys to timm's."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"^downsample_layers\.0\.", "stem.", key)
        key = re.sub(r"^downsample_layers\.(\d)\.", r"stages.\1.downsample.", key)
        key = re.sub(r"^stages\.(\d)\.(\d+)\.", r"stages.\1.blocks.\2.", key)
        key = key.replace(".dwconv.", ".conv_dw.").replace(".pwconv1.", ".mlp.fc1.").replace(".pwconv2.", ".mlp.fc2.")
        key = re.sub(r"^norm\.", "head.norm.", key)
        key = re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", key)
        out[key] = value
    return out


def _model_3d(in_channels: int = 3, num_classes: int = 5, kernel_depth: int = 1) -> ConvNeXt3d:
    return ConvNeXt3d(
        num_classes=num_classes,
        in_channels=in_channels,
        depths=DEPTHS,
        dims=DIMS,
        norm="layernorm",
        kernel_size=(kernel_depth, 7, 7),
        stem_stride=(1, 4, 4),
        downsample_strides=(1, 2, 2),
    ).eval()


@pytest.mark.parametrize("naming", ["facebookresearch", "timm"])
@pytest.mark.parametrize("kernel_depth", [1, 3])
def test_one_slice_volume_matches_2d(naming: str, kernel_depth: int) -> None:
    model_2d = _random_2d()
    state = model_2d.state_dict()
    if naming == "timm":
        state = _to_timm(state)
    model_3d = _model_3d(kernel_depth=kernel_depth)
    report = load_2d_weights(model_3d, state, mode="center")
    assert report.source_format == naming
    assert report.missing == [] and report.unused == [] and report.head_loaded
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model_2d(image)
        got = model_3d(image.unsqueeze(2))  # (N, C, 1, H, W)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_grey_stem_sums_rgb_and_head_dropped() -> None:
    model_2d = _random_2d(num_classes=5)
    model_3d = _model_3d(in_channels=1, num_classes=2)
    head_before = model_3d.head.weight.clone()
    report = load_2d_weights(model_3d, model_2d.state_dict())
    assert not report.head_loaded and report.missing == ["head.bias", "head.weight"]
    assert any("head dropped" in note for note in report.notes)
    assert torch.equal(model_3d.head.weight, head_before)
    grey = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        feats_2d = model_2d.norm(_features_2d(model_2d, grey.expand(-1, 3, -1, -1)))
        feats_3d = model_3d.forward_head(model_3d.forward_features(grey.unsqueeze(2)), pre_logits=True)
    torch.testing.assert_close(feats_3d, feats_2d, atol=1e-4, rtol=1e-4)


def _features_2d(model: ConvNeXt2d, x: torch.Tensor) -> torch.Tensor:
    for down, stage in zip(model.downsample_layers, model.stages, strict=True):
        x = stage(down(x))
    return x.mean((-2, -1))


def test_kernel_modes_and_channel_adaptation() -> None:
    w = torch.randn(4, 2, 3, 3)
    center = inflate_kernel(w, 3, "center")
    assert center.shape == (4, 2, 3, 3, 3) and torch.equal(center[:, :, 1], w) and center[:, :, 0].abs().sum() == 0
    mean = inflate_kernel(w, 4, "mean")
    torch.testing.assert_close(mean.sum(2), w)  # a volume constant over depth sees the 2D kernel
    rgb = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(adapt_input_channels(rgb, 1), rgb.sum(1, keepdim=True))
    six = adapt_input_channels(rgb, 6)
    torch.testing.assert_close(six.sum(1), rgb.sum(1))  # equal-valued channels give the RGB response
    with pytest.raises(ValueError, match="mode"):
        inflate_kernel(w, 3, "edge")


def test_shape_mismatch_and_unknown_format() -> None:
    state = _random_2d().state_dict()
    wide = ConvNeXt3d(depths=DEPTHS, dims=(16, 32, 48, 64), norm="layernorm")
    with pytest.raises(ValueError, match="same ConvNeXt variant"):
        load_2d_weights(wide, state)
    with pytest.raises(ValueError, match="timm or facebookresearch"):
        load_2d_weights(wide, {"conv1.weight": torch.zeros(1)})
    pre_stem = ConvNeXt3d(depths=DEPTHS, dims=DIMS, norm="layernorm", stem_conv_channels=8)
    with pytest.raises(ValueError, match="stem_conv_channels"):  # not silently adapted to 8 "input channels"
        load_2d_weights(pre_stem, state)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_load_from_file(tmp_path, suffix: str) -> None:
    state = _random_2d().state_dict()
    path = tmp_path / f"convnext2d{suffix}"
    if suffix == ".pth":
        torch.save({"model": state, "epoch": 3}, path)
    else:
        from safetensors.torch import save_file

        save_file(_to_timm(state), str(path))
    report = load_2d_weights_file(_model_3d(), path, mode="mean")
    assert report.missing == [] and report.mode == "mean"
    with pytest.raises(UserError, match="not found"):
        load_2d_weights_file(_model_3d(), tmp_path / "missing.pth")


def test_a_pickle_with_code_is_refused_in_one_line_and_never_run(tmp_path) -> None:
    import collections
    import pickle

    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"

    class Evil:
        def __reduce__(self):
            return (marker.touch, ())

    torch.save({"model": collections.OrderedDict(), "hook": Evil()}, path, pickle_module=pickle)
    with pytest.raises(UserError) as caught:
        load_2d_weights_file(_model_3d(), path)
    message = str(caught.value)
    assert "\n" not in message and "without running pickled code" in message and "weights_only=False" not in message
    assert not marker.exists()


def test_train_cli_init_2d_starts_from_the_inflated_weights(csv_dataset, tmp_path) -> None:
    """`train --init-2d` with lr 0: the saved 3D weights are exactly the inflated 2D ones."""
    from typer.testing import CliRunner

    from medconvnext.cli.main import app
    from medconvnext.engine.checkpoint import load_checkpoint

    state = _random_2d(num_classes=7).state_dict()
    weights = tmp_path / "convnext2d.pth"
    torch.save(state, weights)
    run = tmp_path / "run"
    args = ["train", "--data", str(csv_dataset), "--out", str(run), "--epochs", "1", "--lr", "0", "--init-2d",
            str(weights), "--set", f"model.args.depths={list(DEPTHS)}", "--set", f"model.args.dims={list(DIMS)}",
            "--set", "model.args.norm=layernorm", "--set", "train.weight_decay=0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    model = load_checkpoint(run / "checkpoint_best.safetensors").build_model()
    expected = copy.deepcopy(model)
    report = load_2d_weights(expected, state)
    assert "stages.0.0.dwconv.weight" in report.loaded and model.state_dict()["stages.0.0.dwconv.weight"].shape[2] == 7
    for key in report.loaded:
        torch.testing.assert_close(model.state_dict()[key], expected.state_dict()[key], rtol=0, atol=0)
    assert '"head_loaded": false' in (run / "init_2d.json").read_text(encoding="utf-8")


def test_train_cli_init_2d_missing_file_is_a_user_error(csv_dataset, tmp_path) -> None:
    from typer.testing import CliRunner

    from medconvnext.cli.main import app

    result = CliRunner().invoke(app, ["train", "--data", str(csv_dataset), "--out", str(tmp_path / "run"),
                                      "--init-2d", str(tmp_path / "nope.pth")])
    assert result.exit_code == 2 and "nope.pth" in result.output and "not found" in result.output
    assert not (tmp_path / "run").exists()


def test_train_cli_init_2d_that_does_not_fit_is_refused_before_the_run_exists(csv_dataset, tmp_path) -> None:
    """2D weights the model cannot take (here: a pre-stem before the stem) are tried on a copy first, so the run
    folder is not created and the corrected command is not told it 'already holds a run'."""
    from typer.testing import CliRunner

    from medconvnext.cli.main import app

    weights = tmp_path / "convnext2d.pth"
    torch.save(_random_2d().state_dict(), weights)
    args = ["train", "--data", str(csv_dataset), "--out", str(tmp_path / "run"), "--epochs", "1", "--init-2d",
            str(weights), "--set", f"model.args.depths={list(DEPTHS)}", "--set", f"model.args.dims={list(DIMS)}",
            "--set", "model.args.norm=layernorm", "--set", "model.args.stem_conv_channels=4"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "stem_conv_channels" in result.output
    assert not (tmp_path / "run").exists()
