from pathlib import Path

import pytest
from conftest import SAMPLE_DATA

from medconvnext.choices import Augment, choices
from medconvnext.config import Config, apply_overrides, load_config, parse_set_option, save_config
from medconvnext.data.fingerprint import resolve_intensity
from medconvnext.data.intensity import INTENSITY_MODES
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


def test_a_dotted_model_argument_sets_a_nested_mapping_as_yaml_would():
    config = Config()
    apply_overrides(config, dict([parse_set_option("model.args.mil.embedding_norm=false"),
                                  parse_set_option("model.args.mil.attention_dim=64"),
                                  parse_set_option("model.args.global_pool=max")]))
    assert config.model.args == {"mil": {"embedding_norm": False, "attention_dim": 64}, "global_pool": "max"}
    with pytest.raises(UserError, match="model.args.global_pool is 'max', not a mapping"):
        apply_overrides(config, dict([parse_set_option("model.args.global_pool.x=1")]))


def test_defaults_are_a_config():
    assert load_config(None) == Config()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train:\n  lrr: 1\n", "unknown field 'train.lrr'"),
        ("train:\n  epochs: many\n", "train.epochs = 'many' is not an integer"),
        ("train:\n  lr: true\n", "train.lr = true is not a number"),  # YAML's spelling, not Python's True
        ("train:\n  ema: null\n", "train.ema = null is not true or false"),
        ("preprocessing:\n  spacing: yes\n", "preprocessing.spacing = true is not a list of numbers"),
        ("train: 5\n", "train must be a mapping of its fields .*got 5"),
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


def test_exponent_floats_without_a_dot_are_numbers(tmp_path):
    """PyYAML (YAML 1.1) reads 3e-4 as a string; the toolkit reads it as YAML 1.2 does, on --set, in config files
    (model.args too, which is not type-checked) and nowhere turns text into numbers."""
    assert parse_set_option("train.lr=3e-4") == ("train.lr", 0.0003)
    assert parse_set_option("model.args.drop_path_rate=1E-1") == ("model.args.drop_path_rate", 0.1)
    assert parse_set_option("train.tracking_name=e3")[1] == "e3" and parse_set_option("x.y=1e")[1] == "1e"
    path = tmp_path / "lr.yaml"
    path.write_text("train:\n  lr: 1e-3\n  weight_decay: 5e-2\nmodel:\n  args:\n    layer_scale_init: 1e-6\n",
                    encoding="utf-8")
    config = load_config(path)
    assert (config.train.lr, config.train.weight_decay, config.model.args["layer_scale_init"]) == (1e-3, 5e-2, 1e-6)


def test_set_option_needs_equals():
    with pytest.raises(UserError, match="expected section.key=value"):
        parse_set_option("train.lr")


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_committed_configs_load_and_name_real_choices(path):
    config = load_config(path)
    assert config.model.name in list_models()
    assert resolve_intensity(config.preprocessing) in INTENSITY_MODES
    assert config.data.augment in choices(Augment)


MODE_FIELDS = ["model.init_2d_mode", "data.cache", "data.augment", "data.augment_on", "data.leakage",
               "preprocessing.modality", "preprocessing.intensity", "train.balance", "train.select", "train.patches",
               "inference.mode", "inference.aggregation"]


def _choice_sets() -> dict[frozenset, str]:
    """Every Literal alias of medconvnext.choices as a set of values (and less its ``auto``), -> its name."""
    import typing

    from medconvnext import choices

    sets = {}
    for name, alias in vars(choices).items():
        if typing.get_origin(alias) is typing.Literal:
            values = frozenset(typing.get_args(alias))
            sets[values] = sets[values - {"auto"}] = name
    return sets


def _name(node) -> str | None:
    return getattr(node, "id", getattr(node, "attr", None))


def _string_collections(tree):
    """(line, values) of every tuple, list or set of two or more string literals, and of every ``Literal[...]``."""
    import ast

    for node in ast.walk(tree):
        items = None
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            items = node.elts
        elif isinstance(node, ast.Subscript) and _name(node.value) == "Literal":
            items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if items and len(items) >= 2 and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in items):
            yield node.lineno, frozenset(e.value for e in items)


def test_no_module_keeps_a_copy_of_a_choice_list():
    """Every closed set of choices is one Literal alias in medconvnext/choices.py; no module of the library or the
    CLI spells the same values again (a tuple, list or set of strings, or another Literal), so they cannot drift."""
    import ast

    import medconvnext

    sets = _choice_sets()
    assert {"Cache", "Aggregation", "InferenceMode", "EvalSplit", "CamMethod", "Tracker"} <= set(sets.values())
    package = Path(medconvnext.__file__).parent
    copies = []
    for path in [*package.rglob("*.py"), *(package.parent / "cli").rglob("*.py")]:
        if path.name == "choices.py":
            continue
        for line, values in _string_collections(ast.parse(path.read_text(encoding="utf-8"))):
            if values in sets:
                copies.append(f"{path.relative_to(package.parent)}:{line} copies {sets[values]}")
    assert not copies, copies


def test_choices_are_the_literal_values_and_the_schemes_match_intensity():
    from medconvnext.choices import Crop, choices
    from medconvnext.config import Intensity
    from medconvnext.data.intensity import SCHEMES

    assert choices(Crop) == ("auto", "none", "body", "nonzero")
    assert set(SCHEMES) == set(choices(Intensity)) - {"auto"}  # one class per scheme the config may name
    with pytest.raises(TypeError, match="not a Literal"):
        choices(str)


@pytest.mark.parametrize("field", MODE_FIELDS)
def test_every_mode_field_is_checked_before_anything_is_written(field, tmp_path):
    from typer.testing import CliRunner

    from medconvnext.cli.main import app

    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--data", str(SAMPLE_DATA), "--out", str(out), "--epochs", "1",
                                      "--set", f"{field}=zcore"])
    assert result.exit_code == 2, result.output
    assert field in result.output and "zcore" in result.output and "is not one of" in result.output
    assert not out.exists()
