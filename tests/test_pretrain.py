"""``pretrain`` (FCMAE) end to end on tiny volumes, ``train --init`` and layer-wise lr decay."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import blob_volume, write_volume
from safetensors.torch import load_file
from test_resume import StopAfter
from typer.testing import CliRunner

from medconvnext.cli.main import app
from medconvnext.config import Config, apply_overrides
from medconvnext.engine.cv import cross_validate
from medconvnext.engine.optim import layer_decay_groups
from medconvnext.engine.pretrain import PretrainOptions, pretrain, pretrain_cases, resume_pretrain
from medconvnext.engine.trainer import SilentCallbacks, train
from medconvnext.errors import UserError
from medconvnext.models import create_model

TINY = {"model.name": "convnext_atto", "model.args.dims": [8, 16, 24, 32], "model.args.depths": [1, 1, 1, 1],
        "model.args.kernel_size": 3, "preprocessing.input_size": [32, 32, 32], "train.device": "cpu",
        "train.batch_size": 4, "train.warmup_epochs": 0}


def tiny(data, epochs: int, **more) -> Config:
    return apply_overrides(Config(), {"data.path": str(data), "train.epochs": epochs, **TINY, **more})


def test_pretrain_lowers_its_loss_and_records_its_cases(tmp_path):
    # smooth volumes (a bright ball on a dark background): unlike noise, what is masked can be predicted
    grid = np.stack(np.meshgrid(*[np.arange(24)] * 3, indexing="ij"))
    rng = np.random.default_rng(0)
    for i in range(12):
        centre = rng.uniform(8, 16, 3).reshape(3, 1, 1, 1)
        ball = (((grid - centre) ** 2).sum(0) < rng.uniform(16, 36)).astype(np.float32)
        write_volume(tmp_path / "scans" / f"s{i:02d}.nii.gz", ball + 0.05 * rng.normal(size=ball.shape))
    config = tiny(tmp_path / "scans", 8, **{"train.lr": 3e-3, "preprocessing.intensity": "minmax"})
    result = pretrain(config, tmp_path / "pt", PretrainOptions(mask_unit=8))
    losses = [r["loss"] for r in result.history]
    assert np.mean(losses[-2:]) < 0.7 * losses[0]
    record = json.loads((tmp_path / "pt" / "pretrain.json").read_text(encoding="utf-8"))
    assert len(record["cases"]) == 12 and record["options"]["mask_ratio"] == 0.6
    assert (tmp_path / "pt" / "reconstructions.png").stat().st_size > 1000
    encoder = load_file(str(tmp_path / "pt" / "checkpoint_encoder.safetensors"))
    assert "stem.0.weight" in encoder and not any(k.startswith(("proj", "decoder", "mask_token")) for k in encoder)


def test_bce_pretrain_on_masks_learns_and_refuses_z_scored_inputs(tmp_path):
    grid = np.stack(np.meshgrid(*[np.arange(24)] * 3, indexing="ij"))
    rng = np.random.default_rng(1)
    for i in range(12):  # binary masks: a ball of random centre and radius
        centre = rng.uniform(8, 16, 3).reshape(3, 1, 1, 1)
        write_volume(tmp_path / "masks" / f"m{i:02d}.nii.gz",
                     (((grid - centre) ** 2).sum(0) < rng.uniform(16, 36)).astype(np.float32) * 255)
    config = tiny(tmp_path / "masks", 8, **{"train.lr": 3e-3, "preprocessing.intensity": "minmax"})
    result = pretrain(config, tmp_path / "pt", PretrainOptions(mask_unit=8, loss="bce"))
    losses = [r["loss"] for r in result.history]
    assert np.mean(losses[-2:]) < 0.7 * losses[0]
    assert json.loads((tmp_path / "pt" / "pretrain.json").read_text(encoding="utf-8"))["options"]["loss"] == "bce"
    out = tmp_path / "pt_z"
    args = ["pretrain", "--data", str(tmp_path / "masks"), "--out", str(out), "--loss", "bce", "--epochs", "1",
            "--set", "preprocessing.intensity=zscore", "--set", "model.args.depths=[1,1,1,1]"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "--loss bce needs inputs in [0, 1]" in result.output and not out.exists()


def test_a_folder_of_scans_without_labels_and_test_rows_left_out(tmp_path, csv_dataset):
    rng = np.random.default_rng(0)
    for i in range(3):
        write_volume(tmp_path / "scans" / f"s{i}.nii.gz", blob_volume(rng, True))
    cases, _ = pretrain_cases(tmp_path / "scans")
    assert [c.case_id for c in cases] == ["s0", "s1", "s2"] and all(c.label is None for c in cases)
    table = csv_dataset / "labels.csv"
    lines = table.read_text(encoding="utf-8").splitlines()
    table.write_text("\n".join([lines[0] + ",split"] + [f"{line},{'test' if i < 2 else 'train'}"
                                                         for i, line in enumerate(lines[1:])]) + "\n")
    assert len(pretrain_cases(csv_dataset)[0]) == 10 and len(pretrain_cases(csv_dataset, include_test=True)[0]) == 12


@pytest.mark.parametrize("pre_stem", [{}, {"model.args.stem_conv_channels": 4, "model.args.stem_conv_norm": "none",
                                          "model.args.stem_conv_init": "kaiming"}], ids=["stem", "pre_stem"])
def test_pretrain_then_train_init_loads_every_encoder_tensor(csv_dataset, tmp_path, pre_stem):
    pretrain(tiny(csv_dataset, 1, **pre_stem), tmp_path / "pt", PretrainOptions())
    encoder = load_file(str(tmp_path / "pt" / "checkpoint_encoder.safetensors"))
    assert ("pre_stem.0.weight" in encoder) == bool(pre_stem)
    train(tiny(csv_dataset, 1, **{"model.init": str(tmp_path / "pt"), "train.lr": 0.0, "train.layer_decay": 0.7,
                                  **pre_stem}), tmp_path / "ft")
    init = json.loads((tmp_path / "ft" / "init.json").read_text(encoding="utf-8"))
    assert init["loaded"] == len([k for k in encoder if not k.startswith("head.")])
    tuned = load_file(str(tmp_path / "ft" / "checkpoint_last.safetensors"))
    for key, value in encoder.items():  # lr 0: every encoder tensor arrives unchanged
        if not key.startswith("head.") and "running" not in key:
            torch.testing.assert_close(tuned[key], value)


def test_init_refuses_another_architecture_or_intensity_before_writing(csv_dataset, tmp_path):
    pretrain(tiny(csv_dataset, 1, **{"preprocessing.intensity": "minmax"}), tmp_path / "pt", PretrainOptions())
    with pytest.raises(UserError, match=r"of another shape.*\(it holds convnext_atto, .*dims=\[8, 16, 24, 32\]"):
        train(tiny(csv_dataset, 1, **{"model.init": str(tmp_path / "pt"), "model.args.dims": [8, 16, 24, 40],
                                      "preprocessing.intensity": "minmax"}), tmp_path / "ft")
    assert not (tmp_path / "ft").exists()
    # an encoder pretrained on [0, 1] inputs, fine-tuned on z-scored ones: refused, naming the fix
    with pytest.raises(UserError, match=r"intensity 'minmax', this run plans 'zscore'.*intensity=minmax"):
        train(tiny(csv_dataset, 1, **{"model.init": str(tmp_path / "pt"), "preprocessing.intensity": "zscore"}),
              tmp_path / "ft")
    assert not (tmp_path / "ft").exists()
    # cv checks the same before it writes cv.json (which would block the corrected command)
    for bad, match in (({"model.args.dims": [8, 16, 24, 40], "preprocessing.intensity": "minmax"}, "of another shape"),
                       ({"preprocessing.intensity": "zscore"}, "this run plans 'zscore'")):
        with pytest.raises(UserError, match=match):
            cross_validate(tiny(csv_dataset, 1, **{"model.init": str(tmp_path / "pt"), **bad}), tmp_path / "cv",
                           folds=2, callbacks=SilentCallbacks())
        assert not (tmp_path / "cv").exists()
    with pytest.warns(UserWarning, match=r"trained on input size \[32, 32, 32\], this run plans \[64, 64, 64\]"):
        train(tiny(csv_dataset, 1, **{"model.init": str(tmp_path / "pt"), "preprocessing.intensity": "minmax",
                                      "preprocessing.input_size": [64, 64, 64]}), tmp_path / "ft")


def test_pretrain_resume_after_a_kill_matches_an_uninterrupted_run(csv_dataset, tmp_path):
    full = pretrain(tiny(csv_dataset, 3), tmp_path / "full", PretrainOptions())
    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny(csv_dataset, 3), tmp_path / "cut", PretrainOptions(), callbacks=StopAfter(2))
    # a state written before pretrain ran train's loop has no ema, best or stopped: it resumes all the same
    shutil.copytree(tmp_path / "cut", tmp_path / "old")
    (tmp_path / "old" / "medconvnext.lock").unlink(missing_ok=True)
    state = torch.load(tmp_path / "old" / "training_state.pt", weights_only=True)
    torch.save({k: v for k, v in state.items() if k not in ("ema", "ema_updates", "best", "stopped")},
               tmp_path / "old" / "training_state.pt")
    resumed = resume_pretrain(tmp_path / "cut")
    assert [r["loss"] for r in resumed.history] == pytest.approx([r["loss"] for r in full.history], rel=1e-5)
    assert [r["loss"] for r in resume_pretrain(tmp_path / "old").history] == [r["loss"] for r in resumed.history]
    for epochs in (None, 3, 2):  # nothing left to run: said before any work, whatever the --epochs
        with pytest.raises(UserError, match=r"already finished \(3 epochs\); pass --epochs N \(more than 3\)"):
            resume_pretrain(tmp_path / "cut", epochs=epochs)


def test_pretrain_cli_shows_its_plan_and_counts_epochs(tmp_path, csv_dataset):
    out = tmp_path / ("a_long_folder_name_" * 6) / "pt"  # longer than the 100 columns given below
    args = ["pretrain", "--data", str(csv_dataset), "--out", str(out), "--epochs", "1", "--mask-ratio", "0.5"]
    args += [f"--set={key}={json.dumps(value)}" for key, value in TINY.items() if key != "train.epochs"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "masking FCMAE, 50% of 8³-voxel units masked, mse loss" in text and "scans 12 cases" in text
    assert "schedule 1 epoch x 3 steps, batch 4" in text and "done: 1 epoch, reconstruction loss" in text
    # not a terminal: the plan's title and the closing line keep the full paths on one line, however long
    assert any(line.startswith(f"╭─ {out} ─") for line in result.output.splitlines())
    done = next(line for line in result.output.splitlines() if line.startswith("done:"))
    assert done.endswith(str(out / "checkpoint_encoder.safetensors"))
    # the encoder has no trained head and no classes: predicting with it is refused, not a crash after the forward
    scan = csv_dataset / "img" / "c00.nii.gz"
    refused = CliRunner().invoke(app, ["predict", str(scan), "--model", str(out / "checkpoint_encoder.safetensors")])
    assert refused.exit_code == 2 and "a pretrained encoder without classes" in refused.output
    assert "medconvnext train --init" in refused.output


def test_pretrain_cli_refuses_other_families(csv_dataset, tmp_path):
    result = CliRunner().invoke(app, ["pretrain", "--data", str(csv_dataset), "--out", str(tmp_path / "r"),
                                      "--model", "resnext_tiny"])
    assert result.exit_code == 2 and "ConvNeXt family only" in result.output
    assert not (tmp_path / "r").exists()
    result = CliRunner().invoke(app, ["pretrain", "--data", str(csv_dataset), "--out", str(tmp_path / "r"),
                                      "--model", "convnext_med_iso_prestem", "--patch-size", "6"])
    assert result.exit_code == 2 and "--patch-size (6, 6, 6) must be a multiple of the stem stride" in result.output
    assert not (tmp_path / "r").exists()


def test_layer_decay_scales_the_lr_by_depth():
    model = create_model("convnext_atto", depths=(1, 1, 2, 1), dims=(8, 16, 24, 32))
    # the model numbers its own layers (depths 1, 1, 2, 1): stem 0, blocks 1..5, the head 6
    assert model.num_layers == 7
    assert model.layer_id("stem.0.weight") == 0
    assert model.layer_id("downsample.0.1.weight") == 2
    assert model.layer_id("stages.2.1.pwconv1.weight") == 4
    assert model.layer_id("head.weight") == 6 and model.layer_id("head_norm.bias") == 6
    with_pre_stem = create_model("convnext_atto", depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), stem_conv_channels=4)
    assert with_pre_stem.layer_id("pre_stem.0.weight") == 0
    groups = layer_decay_groups(model, 0.05, 1.0, 0.5)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert lr_of[id(model.head.weight)] == 1.0 and lr_of[id(model.stem[0].weight)] == 0.5**6
    assert lr_of[id(model.stages[2][1].pwconv1.weight)] == 0.5**2
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    # a family that does not number its layers is refused, named; the optimiser knows no family's names
    for name in ("resnext_tiny", "convmixer_128_4"):
        with pytest.raises(UserError, match=r"train.layer_decay: \w+ does not number its layers"):
            layer_decay_groups(create_model(name), 0.05, 1.0, 0.5)


def test_pretrain_runs_the_augmentation_on_the_device_when_asked(csv_dataset, tmp_path, monkeypatch):
    """data.augment_on=device moves the random augmentation out of the loader into the step (it used to be
    ignored by pretrain); the seeded run is reproducible."""
    from medconvnext.engine.feeding import BatchAugment

    calls = []
    real = BatchAugment.__call__
    monkeypatch.setattr(BatchAugment, "__call__", lambda self, x: calls.append(x.shape) or real(self, x))
    config = tiny(csv_dataset, 2, **{"data.augment_on": "device", "data.augment": "flips"})
    first = pretrain(config, tmp_path / "a", PretrainOptions(mask_unit=8))
    assert calls and all(len(shape) == 5 for shape in calls)
    again = pretrain(config, tmp_path / "b", PretrainOptions(mask_unit=8))
    assert [r["loss"] for r in again.history] == [r["loss"] for r in first.history]
