"""Saliency maps (--cam): Grad-CAM numerics, occlusion, and maps written on the scan's own grid."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SAMPLE_DATA
from helpers_predict import TINY_CONVNEXT, make_checkpoint
from typer.testing import CliRunner

from medconvnext.cli.main import app
from medconvnext.engine.inference import FoldEnsemble, Predictor
from medconvnext.engine.saliency import NoSpatialResolution, grad_cam, occlusion_map, scan_saliency
from medconvnext.models import create_model

runner = CliRunner()
# solid lesion; voxel axes (S, L, A), spacing 2.29 x 1.77 x 1.50 mm: reorientation and resampling both run
SCAN = SAMPLE_DATA / "images" / "case_002.nii.gz"


def _lesion_checkpoint(path: Path) -> Path:
    """A constructed ConvMixer whose 'solid' logit is the mean of GELU(intensity): it looks at bright voxels.

    1x1x1 patch embedding with weight 1 (features = BN(GELU(x)), BN the identity), no mixer layers,
    head weights (-1, +1): Grad-CAM for 'solid' is then ReLU(GELU(x)) normalised, and hiding a bright
    region lowers P(solid).
    """
    model = create_model("convmixer_128_4", num_classes=2, dim=1, depth=0, patch_size=1, kernel_size=1)
    with torch.no_grad():
        model.stem[0].weight.fill_(1.0)
        model.stem[0].bias.zero_()
        model.head.weight.copy_(torch.tensor([[-1.0], [1.0]]))
        model.head.bias.zero_()
    return make_checkpoint(path, model=model)


def _scan_regions() -> tuple[np.ndarray, np.ndarray]:
    """Masks on the scan's grid: the lesion (bright voxels) and voxels > 6 mm outside its outline."""
    image = nib.load(SCAN)
    data = np.asarray(image.dataobj, dtype=np.float32)
    lesion = data > 200  # lesions 300-500, background 40-80, noise +-45
    world = nib.affines.apply_affine(image.affine, np.indices(data.shape).reshape(3, -1).T).reshape(*data.shape, 3)
    centre = world[lesion].mean(axis=0)
    distance = np.linalg.norm(world - centre, axis=-1)
    return lesion, distance > distance[lesion].max() + 6.0


@pytest.mark.parametrize("method", ["gradcam", "occlusion"])
def test_cam_is_on_the_scan_grid_and_higher_inside_the_lesion(tmp_path, method):
    run = _lesion_checkpoint(tmp_path / "run" / "checkpoint_best.safetensors").parent
    out = tmp_path / "cams"
    result = runner.invoke(app, ["predict", str(SCAN), "--model", str(run), "--cam", str(out), "--cam-method",
                                 method, "--cam-class", "solid"])
    assert result.exit_code == 0, result.output
    scan, cam = nib.load(SCAN), nib.load(out / "case_002_cam.nii.gz")
    assert cam.shape == scan.shape
    np.testing.assert_allclose(cam.affine, scan.affine, atol=1e-5)
    assert nib.aff2axcodes(cam.affine) == ("S", "L", "A")
    values = np.asarray(cam.dataobj)
    assert np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1
    lesion, far = _scan_regions()
    assert far.sum() > 100 and lesion.sum() > 100
    assert values[lesion].mean() > 0.2 and values[lesion].mean() > 5 * values[far].mean()


def _last_stage(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose output forward_features returns, found by hand for each family."""
    return model.blocks[-1] if hasattr(model, "blocks") else model.stages[-1][-1]


@pytest.mark.parametrize(
    ("name", "args", "size"),  # total stride 32 (ConvNeXt, ResNeXt): at 64³ the last stage is 2x2x2
    [("convnext_atto", TINY_CONVNEXT, 64), ("resnext_tiny", {"base_planes": 16, "groups": 2}, 64),
     ("convmixer_128_4", {"dim": 16, "depth": 2}, 32),
     ("convmixer_128_4", {"dim": 16, "depth": 2, "global_pool": "max"}, 32)],  # gradients at each channel's peak
)
def test_grad_cam_equals_a_hand_computation(name, args, size):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, **args).eval()
    x = torch.randn(1, 1, size, size, size, generator=torch.Generator().manual_seed(1))
    store = {}
    hook = _last_stage(model).register_forward_hook(lambda module, inputs, output: store.update(a=output))
    nonzero = 0
    try:
        for k in range(3):
            logits = model(x)
            activations = store["a"]
            (grads,) = torch.autograd.grad(logits[0, k], activations)
            weights = grads.mean(dim=(2, 3, 4))[0]
            cam = torch.relu(torch.einsum("c,cdhw->dhw", weights, activations[0].detach()))
            cam = F.interpolate(cam[None, None], size=(size,) * 3, mode="trilinear", align_corners=False)[0, 0]
            expected = cam / cam.max() if cam.max() > 0 else cam
            nonzero += int(cam.max() > 0)
            torch.testing.assert_close(grad_cam(model, x[0], k), expected, atol=1e-5, rtol=1e-4)
    finally:
        hook.remove()
    assert nonzero >= 1


def test_occlusion_covers_every_voxel_and_ignores_blank_regions():
    # a model that only looks at the first octant: occluding elsewhere changes nothing
    model = create_model("convmixer_128_4", num_classes=2, dim=1, depth=0, patch_size=1, kernel_size=1).eval()
    with torch.no_grad():
        model.stem[0].weight.fill_(1.0)
        model.stem[0].bias.zero_()
        model.head.weight.copy_(torch.tensor([[-1.0], [1.0]]))
    x = torch.zeros(1, 12, 12, 12)
    x[:, :6, :6, :6] = 3.0
    heat = occlusion_map(model, x, 1, cube=4, stride=4)
    assert heat.shape == (12, 12, 12)
    assert heat[:4, :4, :4].min() > 0.05 and heat[8:, 8:, 8:].max() == 0


def test_fold_ensemble_cam_is_the_mean_of_the_folds(tmp_path):
    for fold in (0, 1):
        make_checkpoint(tmp_path / "cv" / f"fold_{fold}" / "checkpoint_best.safetensors", seed=fold + 3)
    ensemble = FoldEnsemble.load(tmp_path / "cv", device="cpu")
    out = tmp_path / "cams"
    result = runner.invoke(app, ["predict", str(SCAN), "--model", str(tmp_path / "cv"), "--cam", str(out),
                                 "--cam-class", "cystic"])
    assert result.exit_code == 0, result.output
    maps = [scan_saliency(member, SCAN, 0).array for member in ensemble.members]
    written = np.asarray(nib.load(out / "case_002_cam.nii.gz").dataobj)
    np.testing.assert_allclose(written, (maps[0] + maps[1]) / 2, atol=1e-6)


def test_sliding_mode_cam_also_lands_on_the_scan_grid(tmp_path):
    run = make_checkpoint(tmp_path / "run" / "checkpoint_best.safetensors").parent
    predictor = Predictor.load(run, device="cpu")
    predictor.inference.mode = "sliding"  # the uncropped volume: only the resampling and reorientation to undo
    scan_map = scan_saliency(predictor, SCAN, 0)
    image = nib.load(SCAN)
    assert scan_map.array.shape == image.shape
    np.testing.assert_allclose(scan_map.affine, image.affine, atol=1e-5)


def test_grad_cam_without_spatial_resolution_falls_back_to_occlusion_and_says_so(tmp_path):
    # convnext_atto at the 32³ input of sample_data/lesions: total stride 32, the last stage is 1x1x1
    run = make_checkpoint(tmp_path / "run" / "checkpoint_best.safetensors").parent
    predictor = Predictor.load(run, device="cpu")
    with pytest.raises(NoSpatialResolution, match="1x1x1 for a 32x32x32 input"):
        grad_cam(predictor.model, torch.randn(1, 32, 32, 32), 0)
    out = tmp_path / "cams"
    result = runner.invoke(app, ["predict", str(SCAN), "--model", str(run), "--cam", str(out)])
    assert result.exit_code == 0, result.output
    warning = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "1x1x1" in warning[0] and "using occlusion instead" in warning[0]
    assert "wrote 1 occlusion map(s)" in result.output
    cam = nib.load(out / "case_002_cam.nii.gz")
    values = np.asarray(cam.dataobj)
    assert values.std() > 0.01 and values.max() == pytest.approx(1.0)  # not the constant map Grad-CAM would give
    assert b"occlusion" in cam.header["descrip"].tobytes()


def test_a_warning_repeated_for_every_scan_is_shown_once_with_its_count(tmp_path):
    """The Grad-CAM fallback is the same for each scan: one warning line, and one line saying how often it came."""
    run = make_checkpoint(tmp_path / "run" / "checkpoint_best.safetensors").parent
    scans = sorted(SCAN.parent.glob("case_00[0-2].nii.gz"))
    result = runner.invoke(app, ["predict", *map(str, scans), "--model", str(run), "--cam", str(tmp_path / "cams"),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    warnings_shown = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings_shown) == 2, result.output
    assert "using occlusion instead" in warnings_shown[0] and "(given 3 times, shown once)" in warnings_shown[1]
    assert "wrote 3 occlusion map(s)" in result.output
