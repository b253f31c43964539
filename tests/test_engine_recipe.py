"""Training recipe pieces: EMA, stochastic depth override, class balance, early stopping, inference selection."""

from __future__ import annotations

import json

import pytest
import torch
from test_resume import tiny_config
from torch import nn

from medconvnext.config import Config, InferenceConfig, apply_overrides
from medconvnext.data.datalist import Case, Datalist
from medconvnext.engine.ema import ModelEma
from medconvnext.engine.inference import _pad_to, choose_mode
from medconvnext.engine.setup import build_model
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


@pytest.mark.parametrize(("key", "value", "message"), [("norm", "instancenorm", "norm must be one of"),
                                                        ("widht", 8, "unexpected keyword argument 'widht'")])
def test_bad_model_args_are_user_errors(csv_dataset, tmp_path, key, value, message):
    config = apply_overrides(Config(), {"data.path": str(csv_dataset), "model.name": "convnext_atto",
                                        f"model.args.{key}": value})
    with pytest.raises(UserError, match=f"model.args: .*{message}"):
        train(config, tmp_path / "run")


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
