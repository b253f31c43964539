"""Training recipe pieces: EMA, stochastic depth override, class balance, early stopping, inference selection."""

from __future__ import annotations

import json

import pytest
import torch
from test_resume import tiny_config
from torch import nn

from medconvnext.config import Config, InferenceConfig, apply_overrides
from medconvnext.data.datalist import Case, Datalist
from medconvnext.engine.ema import ModelEma, recompute_batchnorm
from medconvnext.engine.inference import _pad_to, choose_mode
from medconvnext.engine.model_setup import build_model
from medconvnext.engine.trainer import train
from medconvnext.errors import UserError


def test_ema_is_the_decayed_average_of_the_weights():
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = ModelEma(model, decay=0.75, warmup=False)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)
    assert torch.allclose(ema.module.weight, torch.full((1, 2), 0.75 * 1.0 + 0.25 * 3.0))
    assert not ema.module.weight.requires_grad


def test_ema_warmup_ramps_the_decay_up_to_its_value():
    model = nn.Linear(2, 1)
    ema = ModelEma(model, decay=0.999)
    decays = []
    for _ in range(10000):
        decays.append(ema.current_decay())
        ema.update(model)
    assert decays[0] == 0.1 and decays[10] == 11 / 20 and decays[-1] == 0.999
    assert all(a <= b for a, b in zip(decays, decays[1:], strict=False)) and ema.updates == 10000
    fresh = nn.Linear(2, 1)
    init = fresh.weight.detach().clone()
    ema = ModelEma(fresh, decay=0.999)
    with torch.no_grad():
        model.weight.fill_(5.0)
    ema.update(model)  # the first update takes 90 % of the new weights instead of keeping the initialisation
    assert torch.allclose(ema.module.weight, 0.1 * init + 0.9 * 5.0)


def test_drop_path_rate_goes_to_models_that_take_it():
    config = apply_overrides(Config(), {"train.drop_path_rate": 0.2, "model.args.dims": [8, 16, 32, 64]})
    model = build_model(config, Datalist([Case("a", ("a.nii",), "x"), Case("b", ("b.nii",), "y")], ["x", "y"]))
    assert model.model_args["drop_path_rate"] == 0.2


def test_drop_path_rate_is_ignored_with_a_warning_elsewhere():
    config = apply_overrides(Config(), {"model.name": "convmixer_128_4", "model.args.dim": 8, "model.args.depth": 1,
                                        "train.drop_path_rate": 0.2})
    with pytest.warns(UserWarning, match="drop_path_rate"):
        model = build_model(config, Datalist([Case("a", ("a.nii",), "x"), Case("b", ("b.nii",), "y")], ["x", "y"]))
    assert "drop_path_rate" not in model.model_args


@pytest.mark.parametrize(("field", "value"), [("balance", "oversample"), ("accumulate", 0), ("label_smoothing", 1.0),
                                              ("mixup", -0.2), ("mix_prob", 1.5),
                                              ("select", "best")])
def test_bad_recipe_values_are_user_errors(csv_dataset, tmp_path, field, value):
    with pytest.raises(UserError, match=f"train.{field}"):
        train(tiny_config(csv_dataset, epochs=1, **{field: value}), tmp_path / "run")


@pytest.mark.parametrize(("name", "key", "value", "message"), [
    ("convnext_atto", "norm", "instancenorm", r"model.args: .*norm must be one of"),
    ("convnext_atto", "widht", 8, r"model.args.widht: not an argument of convnext_atto \(its arguments: .*dims"),
    ("convmixer_128_4", "stem_conv_channels", 16, r"model.args.stem_conv_channels: not an argument of convmixer"),
    ("monai_densenet121", "depths", [1], r"not an argument of monai_densenet121 \(its arguments: .*growth_rate")])
def test_bad_model_args_are_user_errors(csv_dataset, tmp_path, name, key, value, message):
    config = apply_overrides(Config(), {"data.path": str(csv_dataset), "model.name": name,
                                        f"model.args.{key}": value})
    with pytest.raises(UserError, match=message):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_early_stopping_with_a_frozen_model(csv_dataset, tmp_path):
    # lr 0: the validation score never improves after epoch 1, so patience 1 stops after epoch 2
    result = train(tiny_config(csv_dataset, epochs=4, lr=0.0, early_stopping_patience=1, balance="sampler"),
                   tmp_path / "run")
    lines = (tmp_path / "run" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    epochs = [json.loads(line)["epoch"] for line in lines]
    assert epochs == [1, 2] and result.best_epoch == 1


def test_select_last_keeps_the_final_epoch(csv_dataset, tmp_path):
    # lr 0: every epoch scores the same, so val_auc selection keeps epoch 1 and "last" must keep epoch 3
    result = train(tiny_config(csv_dataset, epochs=3, lr=0.0, select="last"), tmp_path / "run")
    meta = json.loads((tmp_path / "run" / "checkpoint_best.json").read_text(encoding="utf-8"))
    assert result.best_epoch == 3 and meta["epoch"] == 3


def test_auto_mode_and_padding():
    settings = InferenceConfig(mode="auto")
    assert choose_mode(settings, (64, 64, 64), (32, 32, 32)) == "whole"
    assert choose_mode(settings, (65, 64, 64), (32, 32, 32)) == "sliding"
    assert tuple(_pad_to(torch.zeros(1, 10, 40, 31), (32, 32, 32)).shape) == (1, 32, 40, 32)


@pytest.mark.parametrize(("name", "size"), [("convnext_med_atto", 32), ("convnext_med_iso", 32),
                                           ("convnext_med_iso_prestem", 32), ("convnext_med_iso_mixer", 32),
                                           ("convnext_med_iso_p8", 64)])  # p8: an 8³ stem for ~64³ inputs
def test_medical_convnexts_learn_on_tiny_volumes(name, size, csv_dataset, tmp_path):
    from medconvnext.config import Config, apply_overrides

    config = apply_overrides(Config(), {"data.path": str(csv_dataset), "model.name": name,
                                        "train.epochs": 6, "train.batch_size": 4, "train.lr": 1e-3,
                                        "train.device": "cpu", "preprocessing.input_size": [size] * 3,
                                        "preprocessing.spacing": [0.5, 0.5, 0.5] if size == 64 else None})
    result = train(config, tmp_path / "run")
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < losses[0] and result.best_metrics["val_auc"] >= 0.75


def test_recompute_batchnorm_measures_the_averaged_weights_without_drawing_random_numbers():
    """The running statistics become the mean over the given batches of the batch statistics (SWA's update_bn),
    with dropout off: the global random stream is untouched, and the training mode is restored."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(1, 2, 1), nn.BatchNorm3d(2), nn.Dropout(0.5)).train()
    batches = [torch.randn(4, 1, 3, 3, 3) * 2 + 1, torch.randn(4, 1, 3, 3, 3) - 3]
    with torch.no_grad():
        outs = [model[0](x) for x in batches]
    rng = torch.get_rng_state()
    assert recompute_batchnorm(model, iter(batches)) == 2
    assert torch.equal(torch.get_rng_state(), rng) and model.training and model[1].momentum == 0.1
    bn = model[1]
    expected_mean = torch.stack([o.mean(dim=(0, 2, 3, 4)) for o in outs]).mean(0)
    expected_var = torch.stack([o.var(dim=(0, 2, 3, 4), unbiased=True) for o in outs]).mean(0)
    assert torch.allclose(bn.running_mean, expected_mean, atol=1e-5)
    assert torch.allclose(bn.running_var, expected_var, atol=1e-5)
    before = bn.running_mean.clone()
    assert recompute_batchnorm(model, iter([])) == 0 and torch.equal(bn.running_mean, before)  # kept, not reset
    assert recompute_batchnorm(nn.Linear(2, 2), iter(batches)) == 0


def test_ema_batchnorm_statistics_belong_to_the_saved_weights(csv_dataset, tmp_path):
    """With train.ema on a BatchNorm model, the saved EMA's running statistics are those of its own weights on the
    fixed training batches; the recomputation does not change the training itself (same losses as without it)."""
    from test_resume import metrics

    from medconvnext.engine.checkpoint import load_checkpoint
    from medconvnext.engine.setup import prepare_resume
    from medconvnext.engine.training_data import training_data

    train(tiny_config(csv_dataset, epochs=2, ema=True, ema_bn_batches=2), tmp_path / "fresh")
    train(tiny_config(csv_dataset, epochs=2, ema=True, ema_bn_batches=0), tmp_path / "averaged")
    fresh, averaged = metrics(tmp_path / "fresh"), metrics(tmp_path / "averaged")
    assert [r["train_loss"] for r in fresh] == [r["train_loss"] for r in averaged]
    saved = load_checkpoint(tmp_path / "fresh" / "checkpoint_last.safetensors")
    model = saved.build_model()
    setup = prepare_resume(tmp_path / "fresh", None, "cpu")
    loader = training_data(setup, torch.Generator()).bn_loader
    assert loader is not None and len(loader) == 2
    assert recompute_batchnorm(model, (b["image"] for b in loader)) == 2
    names = [k for k in saved.state_dict if k.endswith("running_var")]
    assert names and all(torch.allclose(model.state_dict()[k], saved.state_dict[k], atol=1e-5) for k in names)
    stale = load_checkpoint(tmp_path / "averaged" / "checkpoint_last.safetensors").state_dict
    assert not all(torch.allclose(stale[k], saved.state_dict[k], atol=1e-3) for k in names)


def test_no_batchnorm_loader_without_ema_or_batchnorm(csv_dataset, tmp_path):
    from medconvnext.engine.setup import prepare_training
    from medconvnext.engine.training_data import training_data

    """The fixed batches are only built where they are used: EMA on, and a model with BatchNorm (not GroupNorm)."""
    for ema, name, args in ((False, "convmixer_128_4", {"dim": 16, "depth": 1}),
                            (True, "convnext_atto", {"dims": [8, 16, 32, 64]})):
        config = tiny_config(csv_dataset, epochs=1, ema=ema)
        config.model.name, config.model.args = name, args
        setup = prepare_training(config, tmp_path / f"run_{ema}", False, None, False, False)
        assert training_data(setup, torch.Generator()).bn_loader is None
