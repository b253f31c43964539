"""``medconvnext data check``: summary + plan on good data; exit 2 listing each bad file; --skip-bad."""

from __future__ import annotations

import numpy as np
from conftest import write_volume
from typer.testing import CliRunner

from medconvnext.cli.main import app

runner = CliRunner()


def make_dataset(root, bad: bool):
    rng = np.random.default_rng(0)
    lines = ["image,label"]
    for i in range(6):
        write_volume(root / f"c{i}.nii.gz", rng.normal(size=(10, 10, 5)).astype(np.float32), (1.0, 1.0, 4.0))
        lines.append(f"c{i}.nii.gz,{'yes' if i % 2 else 'no'}")
    if bad:
        nan = rng.normal(size=(10, 10, 5)).astype(np.float32)
        nan[0, 0, 0] = np.nan
        write_volume(root / "nan.nii.gz", nan)
        (root / "broken.nii.gz").write_bytes(b"\x1f\x8b garbage")
        lines += ["nan.nii.gz,yes", "broken.nii.gz,no"]
    (root / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_check_good_data_prints_summary_and_plan(tmp_path):
    make_dataset(tmp_path, bad=False)
    result = runner.invoke(app, ["data", "check", "--data", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "6 usable" in result.output and "(10, 10, 5) x6" in result.output and "RAS x6" in result.output
    assert "preprocessing plan" in result.output and "input_size: [32, 32, 32]" in result.output


def test_check_bad_files_exit_2_or_are_skipped(tmp_path):
    make_dataset(tmp_path, bad=True)
    result = runner.invoke(app, ["data", "check", "--data", str(tmp_path)])
    assert result.exit_code == 2
    assert "nan.nii.gz: 1 NaN/Inf voxel(s)" in result.output and "broken.nii.gz: unreadable" in result.output
    assert "Traceback" not in result.output
    skipped = runner.invoke(app, ["data", "check", "--data", str(tmp_path), "--skip-bad"])
    assert skipped.exit_code == 0 and "skipped" in skipped.output and "preprocessing plan" in skipped.output


def test_check_prints_the_plan_train_makes(tmp_path):
    """The plan comes from the training cases of the split `train` draws (not from every case): on cases whose
    spacings differ, the printed spacing and input size are those of the run's dataset.json, spelled as in YAML."""
    import json

    rng = np.random.default_rng(1)
    lines = ["image,label"]
    for i in range(12):
        spacing = (1.0 + 0.15 * i, 1.0 + 0.1 * (i % 5), 2.0 + 0.3 * (i % 3))
        write_volume(tmp_path / "data" / f"c{i}.nii.gz", rng.normal(size=(20, 18, 12)).astype(np.float32), spacing)
        lines.append(f"c{i}.nii.gz,{'yes' if i % 2 else 'no'}")
    (tmp_path / "data" / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    model = ["--model", "convmixer_128_4"]
    checked = runner.invoke(app, ["data", "check", "--data", str(tmp_path / "data"), *model])
    assert checked.exit_code == 0, checked.output
    trained = runner.invoke(app, ["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), *model,
                                  "--set", "model.args.dim=8", "--set", "model.args.depth=1", "--epochs", "1",
                                  "--device", "cpu"])
    assert trained.exit_code == 0, trained.output
    plan = json.loads((tmp_path / "run" / "dataset.json").read_text(encoding="utf-8"))["preprocessing"]
    assert f"spacing: [{', '.join(str(v) for v in plan['spacing'])}]" in checked.output
    assert f"input_size: [{', '.join(str(v) for v in plan['input_size'])}]" in checked.output
    assert "clip: null" in checked.output
    assert "labels.csv: 12 cases, 12 usable" in checked.output  # one line, not wrapped to the table's width


def test_check_names_a_bad_model_or_model_argument(tmp_path):
    """The plan's model is built as train builds it: an unknown --model, or an argument the config's model does not
    take, is one line naming it, exit 2."""
    make_dataset(tmp_path, bad=False)
    result = runner.invoke(app, ["data", "check", "--data", str(tmp_path), "--model", "foo"])
    assert result.exit_code == 2 and "--model: unknown model 'foo'" in result.output
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  name: convmixer_128_4\n  args:\n    stem_conv_channels: 4\n", encoding="utf-8")
    result = runner.invoke(app, ["data", "check", "--data", str(tmp_path), "--config", str(config)])
    assert result.exit_code == 2
    assert "model.args.stem_conv_channels: not an argument of convmixer_128_4" in result.output


def test_check_refuses_a_bad_config_before_reading_and_takes_set(tmp_path, monkeypatch):
    """A missing --config or a bad --set is one line and exit 2 before any scan is read; --set reaches the plan."""
    from medconvnext.data import validate

    make_dataset(tmp_path, bad=False)
    reads = []
    real = validate.inspect_datalist
    monkeypatch.setattr(validate, "inspect_datalist", lambda *a, **k: reads.append(1) or real(*a, **k))
    for args in (["--config", str(tmp_path / "nope.yaml")], ["--set", "preprocessing.input_size=[0,32,32]"],
                 ["--set", "preprocessing.nope=1"]):
        result = runner.invoke(app, ["data", "check", "--data", str(tmp_path), *args])
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
        assert "usable" not in result.output and reads == []
    result = runner.invoke(app, ["data", "check", "--data", str(tmp_path),
                                 "--set", "preprocessing.input_size=[16,16,16]"])
    assert result.exit_code == 0 and "input_size: [16, 16, 16]" in result.output and reads == [1]
