from pathlib import Path

import pytest

from medconvnext.config import Config, apply_overrides, load_config, parse_set_option, save_config
from medconvnext.data.fingerprint import resolve_intensity
from medconvnext.data.transforms import AUGMENTATIONS, INTENSITY_MODES
from medconvnext.errors import UserError
from medconvnext.models import list_models


def test_yaml_round_trip_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: convnext_femto\n  args: {drop_path_rate: 0.1}\ntrain:\n  lr: 0.0003\n",
                    encoding="utf-8")
    config = load_config(path)
    assert config.model.name == "convnext_femto"
    assert config.model.args == {"drop_path_rate": 0.1}
    assert config.train.lr == pytest.approx(3e-4)
    apply_overrides(config, dict([parse_set_option("train.epochs=3"), parse_set_option("preprocessing.spacing=1.5")]))
    assert config.train.epochs == 3
    assert config.preprocessing.spacing == [1.5, 1.5, 1.5]
    save_config(config, tmp_path / "out.yaml")
    assert load_config(tmp_path / "out.yaml") == config


def test_defaults_are_a_config():
    assert load_config(None) == Config()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train:\n  lrr: 1\n", "unknown field 'train.lrr'"),
        ("train:\n  epochs: many\n", "train.epochs = 'many' is not a valid int"),
        ("optim:\n  lr: 1\n", "unknown field 'optim.lr'"),
        ("- a\n- b\n", "expected a mapping"),
        ("train: [\n", "not valid YAML"),
    ],
)
def test_bad_config_names_the_field(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        load_config(path)


def test_set_option_needs_equals():
    with pytest.raises(UserError, match="expected section.key=value"):
        parse_set_option("train.lr")


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_committed_configs_load_and_name_real_choices(path):
    config = load_config(path)
    assert config.model.name in list_models()
    assert resolve_intensity(config.preprocessing) in INTENSITY_MODES
    assert config.data.augment in AUGMENTATIONS
