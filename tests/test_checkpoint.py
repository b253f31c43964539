import torch

from medconvnext.engine.checkpoint import load_checkpoint, save_checkpoint
from medconvnext.errors import UserError
from medconvnext.models import create_model


def test_round_trip_rebuilds_the_same_model(tmp_path):
    model = create_model("convnext_atto", num_classes=3, in_channels=2, stem_stride=2).eval()
    path = tmp_path / "checkpoint_best.safetensors"
    save_checkpoint(path, model, {"class_names": ["a", "b", "c"], "preprocessing": {}})
    checkpoint = load_checkpoint(path)
    rebuilt = checkpoint.build_model()
    x = torch.randn(1, 2, 16, 16, 16)
    torch.testing.assert_close(rebuilt(x), model(x))
    assert checkpoint.class_names == ["a", "b", "c"]
    assert checkpoint.meta["model"]["stem_stride"] == 2
    assert (tmp_path / "checkpoint_best.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_best.json", "checkpoint_best.safetensors"]


def test_failed_write_keeps_the_previous_checkpoint(tmp_path):
    model = create_model("convnext_atto")
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, model, {"class_names": ["a", "b"], "epoch": 1})
    try:
        save_checkpoint(path, model, {"class_names": ["a", "b"], "not_json": object()})
    except TypeError:
        pass
    assert load_checkpoint(path).meta["epoch"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_pickle_or_foreign_files_are_refused(tmp_path):
    pickled = tmp_path / "evil.safetensors"
    torch.save({"weights": torch.zeros(2)}, pickled)
    for path in (pickled, tmp_path / "missing.safetensors"):
        try:
            load_checkpoint(path)
        except UserError as exc:
            assert str(path) in str(exc)
        else:
            raise AssertionError("expected a UserError")
