"""The config validates itself: a bad field set through the Python API is refused, naming the field, before the
run folder or any file in it is written (issue: architecture round 2, the drift bugs)."""

from __future__ import annotations

import pytest
from conftest import SAMPLE_DATA

from medconvnext.config import RANGES, Config, config_from_dict
from medconvnext.engine.trainer import train
from medconvnext.errors import UserError

BAD = [
    ("inference", "mode", "slidng", "is not one of"),  # the typo
    ("inference", "aggregation", "median", "is not one of"),
    ("inference", "overlap", 1.0, "out of range"),
    ("inference", "sw_batch_size", 0, "out of range"),
    ("inference", "roi_size", [32, 32], "needs 3 values"),
    ("data", "cache", "ram", "is not one of"),
    ("data", "augment", "strong", "is not one of"),
    ("data", "leakage", "ignore", "is not one of"),
    ("data", "val_fraction", 1.5, "out of range"),
    ("data", "num_workers", -1, "out of range"),
    ("preprocessing", "modality", "pet", "is not one of"),
    ("preprocessing", "intensity", "zscores", "is not one of"),
    ("preprocessing", "crop", "lungs", "is not one of"),
    ("preprocessing", "spacing", [1.0, 0.0, 1.0], "out of range"),
    ("preprocessing", "input_size", [0, 32, 32], "out of range"),
    ("preprocessing", "max_input_voxels", 0, "out of range"),
    ("train", "epochs", 0, "out of range"),
    ("train", "batch_size", 0, "out of range"),
    ("train", "lr", -1.0, "out of range"),
    ("train", "balance", "oversample", "is not one of"),
    ("train", "select", "best", "is not one of"),
    ("train", "patches", "tiles", "is not one of"),
    ("train", "ema_decay", 1.0, "out of range"),
    ("train", "accumulate", 0, "out of range"),
    ("train", "label_smoothing", 1.0, "out of range"),
    ("train", "layer_decay", 0.0, "out of range"),
    ("train", "epochs", "ten", "is not an integer"),
    ("model", "init_2d_mode", "corner", "is not one of"),
]


@pytest.mark.parametrize(("section", "field", "value", "words"), BAD, ids=[f"{s}.{f}={v}" for s, f, v, _ in BAD])
def test_a_bad_field_set_in_python_is_refused_before_any_write(tmp_path, section, field, value, words):
    config = Config()
    config.data.path = str(SAMPLE_DATA)
    setattr(getattr(config, section), field, value)
    out = tmp_path / "run"
    with pytest.raises(UserError, match=rf"^{section}\.{field} = .*{words}"):
        train(config, out)
    assert not out.exists()


def test_ranges_name_real_fields_and_yaml_and_set_use_them():
    config = Config()
    for dotted in RANGES:
        section, field = dotted.split(".")
        assert hasattr(getattr(config, section), field), dotted
    with pytest.raises(UserError, match=r"^config: train.epochs = 0 is out of range: must be >= 1"):
        config_from_dict({"train": {"epochs": 0}})
    with pytest.raises(UserError, match=r"^config: train.lr = -1.0 is out of range: must be >= 0"):
        config_from_dict({"train": {"lr": -1}})
    assert config_from_dict({"preprocessing": {"spacing": 2}}).preprocessing.spacing == [2.0, 2.0, 2.0]
