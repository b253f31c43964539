"""Multiple-instance learning (train.patches=mil): the gated-attention wrapper, bags of patches, and a tiny MIL run on
synthetic chest-CT phantoms through the CLI (train, predict with the attention map, resume)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from test_resume import metrics
from typer.testing import CliRunner

from medconvnext.cli.main import app
from medconvnext.data.patches import RandBagCropd
from medconvnext.data.synthetic import chest_ct, save_phantom
from medconvnext.data.windows import window_starts
from medconvnext.engine.checkpoint import load_checkpoint
from medconvnext.engine.inference import Predictor
from medconvnext.engine.sliding_window import sliding_window_mil
from medconvnext.engine.validation import validate_run
from medconvnext.models import create_model
from medconvnext.models.mil import MILClassifier

torch.set_num_threads(1)
runner = CliRunner()
SHAPE, SPACING = (64, 64, 32), (4.0, 4.0, 4.0)  # small phantoms: a 256 x 256 x 128 mm field
PATCH = 16  # voxels at 4 mm: four windows across the body


@pytest.mark.parametrize("name", ["convnext_atto", "convmixer_128_4", "resnext_tiny"])
def test_wrapper_pools_bags_into_one_logit_vector_per_volume(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, in_channels=2, mil={"attention_dim": 8}).eval()
    assert isinstance(model, MILClassifier) and model.model_args["mil"] == {"attention_dim": 8}
    bags = torch.randn(2, 5, 2, 32, 32, 32)  # (B, K, C, D, H, W)
    with torch.no_grad():
        logits = model(bags)
        embeddings = model.embed(bags.flatten(0, 1)).view(2, 5, -1)
        pooled, weights = model.pool(embeddings)
    assert logits.shape == (2, 3) and embeddings.shape == (2, 5, model.num_features)
    torch.testing.assert_close(pooled, logits)
    assert weights.shape == (2, 5) and (weights > 0).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2))
    # a bag's logits do not depend on the order of its patches (permutation-invariant pooling)
    with torch.no_grad():
        torch.testing.assert_close(model(bags[:, [4, 2, 0, 1, 3]]), logits, atol=1e-5, rtol=1e-4)
        assert model(bags[:, 0]).shape == (2, 3)  # (N, C, D, H, W): N bags of one
    assert not any(k.startswith("encoder.head.") for k in model.state_dict())  # its own classifier is dropped


def test_embedding_norm_standardises_each_feature_over_the_instances_in_place_of_the_head_layernorm():
    torch.manual_seed(0)
    model = create_model("convnext_med_iso", mil={"embedding_norm": True, "attention_dim": 8}, global_pool="max")
    assert isinstance(model.encoder.head_norm, torch.nn.Identity)  # no per-instance LayerNorm before it
    bags = 3.0 + 2.0 * torch.randn(2, 6, 1, 16, 16, 16)
    model.train()
    embeddings = model.embed(bags.flatten(0, 1))  # training: the 12 instances' own statistics
    torch.testing.assert_close(embeddings.mean(0), torch.zeros(model.num_features), atol=1e-5, rtol=0)
    torch.testing.assert_close(embeddings.std(0, unbiased=False), torch.ones(model.num_features), atol=1e-3, rtol=0)
    model.eval()  # inference: the running statistics, so a bag's logits do not depend on its companions
    with torch.no_grad():
        alone, together = model(bags[:1]), model(bags)[:1]
    torch.testing.assert_close(alone, together)
    with pytest.raises(ValueError, match="embedding_norm"):
        create_model("convnext_med_iso", mil={"embedding_norm": "yes"})


def test_layer_decay_trains_the_mil_head_at_lr_and_the_convnext_encoder_below_it():
    from medconvnext.engine.optim import layer_decay_groups

    model = create_model("convnext_med_iso", mil={"embedding_norm": True}, global_pool="max")
    groups = layer_decay_groups(model, weight_decay=0.05, lr=1e-3, decay=0.5)
    rate = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    for module in (model.attention, model.head, model.embedding_norm):
        assert all(rate[id(p)] == 1e-3 for p in module.parameters())
    blocks = model.encoder.stages[0]  # one isotropic stage of 4 blocks, below the head: 0.5, 0.25, ...
    for depth, block in enumerate(reversed(blocks), start=1):
        assert all(rate[id(p)] == pytest.approx(1e-3 * 0.5 ** depth) for p in block.parameters())
    assert all(rate[id(p)] == pytest.approx(1e-3 * 0.5 ** 5) for p in model.encoder.stem.parameters())


def test_sliding_window_mil_pools_every_window_once_and_the_weights_sum_to_one():
    torch.manual_seed(0)
    model = create_model("convmixer_128_4", num_classes=2, dim=16, depth=1, mil={}).eval()
    volume = torch.randn(1, 40, 70, 33)
    small = sliding_window_mil(volume, model, 32, overlap=0.25, sw_batch_size=1)
    large = sliding_window_mil(volume, model, 32, overlap=0.25, sw_batch_size=16)
    assert small.attention.shape == small.grid_shape == (2, 3, 2)
    torch.testing.assert_close(small.attention.sum(), torch.tensor(1.0))
    # chunking bounds memory and changes nothing: the pooling runs once over all the embeddings
    torch.testing.assert_close(small.probabilities, large.probabilities, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(small.attention, large.attention, atol=1e-5, rtol=1e-4)
    windows = torch.stack([volume[:, d:d + 32, h:h + 32, w:w + 32] for d, h, w in small.starts])[None]
    with torch.no_grad():
        torch.testing.assert_close(torch.softmax(model(windows)[0], -1), small.probabilities, atol=1e-5, rtol=1e-4)


def test_a_bag_holds_foreground_patches_of_one_volume():
    volume = torch.zeros(1, 40, 40, 40)
    volume[0, 30:36, 4:10, 30:36] = 1.0
    bag = RandBagCropd(["image"], (12, 12, 12), bag_size=6, foreground_share=1.0)
    bag.set_random_state(seed=0)
    patches = bag({"image": volume})["image"]
    assert patches.shape == (6, 1, 12, 12, 12)
    assert all(p.sum() > 0 for p in patches)  # every patch centred on the blob contains it
    again = RandBagCropd(["image"], (12, 12, 12), bag_size=6, foreground_share=1.0).set_random_state(seed=0)
    assert torch.equal(again({"image": volume})["image"], patches)


def test_a_bag_as_large_as_the_grid_covers_every_voxel_of_the_volume():
    assert window_starts((40, 40, 12), (12, 12, 12), 0.0) == [(a, b, 0) for a in (0, 9, 19, 28) for b in (0, 9, 19, 28)]
    volume = torch.randn(1, 30, 26, 12)
    bag = RandBagCropd(["image"], (12, 12, 12), bag_size=len(window_starts((30, 26, 12), (12, 12, 12), 0.0)),
                       foreground_share=0.5).set_random_state(seed=3)
    seen = torch.zeros(30, 26, 12, dtype=torch.bool)
    for start in bag.tile_starts(volume):
        seen[tuple(slice(s, s + 12) for s in start)] = True
    assert seen.all()  # a finding anywhere is in the bag
    smaller = RandBagCropd(["image"], (12, 12, 12), bag_size=4, foreground_share=0.0).set_random_state(seed=3)
    assert len(set(smaller.tile_starts(volume))) == 4  # drawn without replacement
    with pytest.raises(ValueError, match="smaller than the patch"):
        bag.tile_starts(torch.zeros(1, 8, 26, 12))


def _phantoms(root: Path, count: int = 6) -> Path:
    """``count`` small chest phantoms, half with a 10 mm nodule at a lung's periphery; labels.csv."""
    rows = []
    for i in range(count):
        nodule = i % 2 == 0
        phantom = chest_ct(SHAPE, SPACING, nodule=nodule, seed=i, radius_mm=10.0, periphery=True)
        save_phantom(phantom, str(root / f"ct{i}.nii.gz"))
        rows.append({"image": f"ct{i}.nii.gz", "label": "nodule" if nodule else "clear"})
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def _train_args(data: Path, out: Path, epochs: int) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--epochs", str(epochs), "--batch-size", "2",
            "--set", "train.device=cpu", "--set", "model.name=convmixer_128_4", "--set", "model.args.dim=16",
            "--set", "model.args.depth=1", "--set", "preprocessing.modality=ct",
            "--set", f"preprocessing.input_size=[{PATCH},{PATCH},{PATCH}]", "--set", "train.patches=mil",
            "--set", "train.mil_bag_size=3", "--set", "train.ema=true", "--set", "data.augment=flips",
            "--set", "data.val_fraction=0.34"]


def test_mil_run_trains_predicts_with_an_attention_map_and_resumes(tmp_path):
    data = _phantoms(tmp_path)
    run = tmp_path / "run"
    result = runner.invoke(app, _train_args(data, run, epochs=1))
    assert result.exit_code == 0, result.output
    checkpoint = load_checkpoint(run / "checkpoint_best.safetensors")
    model = checkpoint.build_model()
    assert checkpoint.meta["model"]["mil"] == {"embedding_norm": True} and isinstance(model, MILClassifier)
    # each patch pooled by its maximum (a small finding is not averaged away) and each embedding feature
    # standardised over the instances, both stored so the rebuild matches
    assert checkpoint.meta["model"]["global_pool"] == "max" and model.encoder.global_pool == "max"
    assert isinstance(model.embedding_norm, torch.nn.BatchNorm1d) and int(model.embedding_norm.num_batches_tracked) > 0

    scan = str(data / "ct0.nii.gz")
    maps, out = tmp_path / "maps", tmp_path / "p.csv"
    result = runner.invoke(app, ["predict", scan, "--model", str(run), "--window-map", str(maps), "-o", str(out)])
    assert result.exit_code == 0, result.output
    attention = nib.load(maps / "ct0_windows.nii.gz")
    weights = np.asarray(attention.dataobj)
    assert weights.ndim == 3 and min(weights.shape) >= 2  # every window of the full volume, not one crop
    assert abs(weights.sum() - 1.0) < 1e-4
    # the map lands on the scan: its affine is the window grid's over the preprocessed volume, in world mm,
    # and every window centre lies inside the scan's field
    predictor = Predictor.load(run, device="cpu")
    prediction = predictor.predict_case(scan)
    assert prediction.mode == "mil"
    volume = predictor.preprocess(scan, crop=False)
    np.testing.assert_allclose(attention.affine, prediction.windows.map_affine(volume.affine), atol=1e-5)
    scan_image = nib.load(scan)
    corners = np.array([[i, j, k, 1] for i in (0, weights.shape[0] - 1) for j in (0, weights.shape[1] - 1)
                        for k in (0, weights.shape[2] - 1)], float)
    centres = (np.linalg.inv(scan_image.affine) @ attention.affine @ corners.T)[:3].T
    assert (centres >= -0.5).all() and (centres <= np.array(scan_image.shape) - 0.5).all()
    with open(out, encoding="utf-8") as f:
        row = next(csv.DictReader(f))
    np.testing.assert_allclose(float(row["prob_nodule"]), prediction.probabilities[
        predictor.class_names.index("nodule")], atol=1e-5)

    result = runner.invoke(app, ["predict", scan, "--model", str(run), "--cam", str(tmp_path / "cams")])
    assert result.exit_code == 2 and "--window-map" in result.output, result.output
    # export: (N, M, C, D, H, W) bags of windows -> the pooled logits; any number of windows, as predict pools them
    result = runner.invoke(app, ["export", str(run)])
    assert result.exit_code == 0, result.output
    described = json.loads((run / "model.preprocessing.json").read_text(encoding="utf-8"))
    assert described["input"]["shape"][:2] == ["N", "M"] and "every sliding window" in described["mil"]
    roi = prediction.windows.roi_size
    windows = torch.stack([volume.as_tensor()[:, d:d + roi[0], h:h + roi[1], w:w + roi[2]]
                           for d, h, w in prediction.windows.starts])
    assert not any(before for axis in prediction.windows.pad for before in axis)  # no padding to redo here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.10 deprecates TorchScript (still loads)
        exported = torch.jit.load(str(run / "model.torchscript.pt"))
    with torch.no_grad():
        probabilities = torch.softmax(exported(windows[None]), dim=1)[0].numpy()
    np.testing.assert_allclose(probabilities, prediction.probabilities, atol=1e-5)

    # resume continues from epoch 1 as if never stopped
    whole = tmp_path / "whole"
    assert runner.invoke(app, _train_args(data, whole, epochs=2)).exit_code == 0
    result = runner.invoke(app, ["train", "--resume", str(run), "--epochs", "2"])
    assert result.exit_code == 0, result.output
    assert metrics(run) == metrics(whole)


def test_a_peripheral_nodule_lies_inside_a_mil_window(tmp_path):
    """The issue's target: the whole body is tiled, so a nodule at the lung periphery is inside some window."""
    data = _phantoms(tmp_path, count=4)
    run = tmp_path / "run"
    # (the augmentation on the device: each patch of a (B, K, C, D, H, W) bag augmented on its own)
    result = runner.invoke(app, [*_train_args(data, run, epochs=1), "--set", "data.augment_on=device"])
    assert result.exit_code == 0, result.output
    predictor = Predictor.load(run, device="cpu")
    phantom = chest_ct(SHAPE, SPACING, nodule=True, seed=0, radius_mm=10.0, periphery=True)
    volume = predictor.preprocess(str(data / "ct0.nii.gz"), crop=False)
    windows = predictor.predict_case(str(data / "ct0.nii.gz")).windows
    # the nodule's centre in voxels of the preprocessed (cropped, resampled) volume that was tiled
    centre = np.linalg.inv(np.asarray(volume.affine)) @ np.array([*phantom.nodule_mm, 1.0])
    padded = centre[:3] + np.array([before for before, _ in windows.pad])
    inside = [all(s <= c <= s + r - 1 for s, c, r in zip(start, padded, windows.roi_size, strict=True))
              for start in windows.starts]
    assert any(inside)
    assert volume.shape[1:] != tuple(predictor.preprocessing.input_size)  # tiled, not one centre crop


def test_mil_settings_are_checked_before_any_write(tmp_path):
    data = _phantoms(tmp_path, count=4)
    for i, (extra, field) in enumerate(((["--set", "train.mil_bag_size=1"], "train.mil_bag_size"),
                         (["--set", "train.mil_foreground_share=1.5"], "train.mil_foreground_share"),
                         (["--set", "train.mixup=0.8"], "train.mixup"),
                         (["--set", "model.name=monai_resnet18"], "train.patches=mil"),
                         (["--set", "model.args.global_pool=mean"], "model.args"),
                         (["--set", "train.layer_decay=0.5"], "the MIL encoder ConvMixer3d"),
                         # (not MIL: refused before the run writes too, so the same --out works once corrected)
                         (["--set", "train.patches=none", "--set", "train.layer_decay=0.5"],
                          "train.layer_decay: ConvMixer3d does not number its layers"),
                         (["--set", "model.args.mil=false"], "model.args.mil must be a mapping"),
                         (["--set", "model.args.mil.embedding_nrom=false"], "not a MIL argument (they are: "
                                                                              "attention_dim, embedding_norm)"))):
        out = tmp_path / f"bad{i}"
        result = runner.invoke(app, [*_train_args(data, out, 1), *extra])
        assert result.exit_code == 2 and field in result.output, result.output
        assert not out.exists()
    result = runner.invoke(app, [*_train_args(data, tmp_path / "x", 1), "--set", "preprocessing.input_size=null"])
    assert result.exit_code == 2 and "preprocessing.input_size" in result.output, result.output


@pytest.mark.slow  # two processes that each import torch and MONAI: 25-40 s on the shared 2-core machine
def test_two_process_gloo_mil_run_matches_single_process_evaluation(tmp_path):
    """DDP needs no MIL code: every parameter gets a gradient (the encoder's own classifier is dropped), and the
    logged validation (each rank its share of the volumes, every window pooled) equals one process's."""
    data = _phantoms(tmp_path, count=4)
    run = tmp_path / "run"
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
            "medconvnext", *_train_args(data, run, epochs=1), "--set", "train.ema=false"]
    proc = subprocess.run(args, capture_output=True, text=True, encoding="utf-8", timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    logged = metrics(run)[-1]
    single = validate_run(run, "last")
    assert abs(single["loss"] - logged["val_loss"]) < 1e-5


def test_model_init_loads_a_trained_classifier_into_the_mil_encoder(tmp_path):
    """``model.init``: a whole-volume run of the same model (all but its head) becomes the MIL encoder."""
    data = _phantoms(tmp_path, count=4)
    plain = tmp_path / "plain"
    result = runner.invoke(app, [*_train_args(data, plain, epochs=1), "--set", "train.patches=none"])
    assert result.exit_code == 0, result.output
    mil = tmp_path / "mil"
    result = runner.invoke(app, [*_train_args(data, mil, epochs=1), "--set", f"model.init={plain}"])
    assert result.exit_code == 0, result.output
    loaded = json.loads((mil / "init.json").read_text(encoding="utf-8"))
    encoder = load_checkpoint(plain / "checkpoint_best.safetensors").state_dict
    assert loaded["loaded"] == len([k for k in encoder if not k.startswith("head.")])
