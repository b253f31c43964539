"""The CLI end to end on real files: train on sample_data, then predict."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import pytest
from conftest import SAMPLE_DATA
from typer.testing import CliRunner

from medconvnext.cli.main import app

runner = CliRunner()
TINY = ["--set", "model.args.depths=[1,1,1,1]", "--set", "model.args.dims=[8,16,32,64]"]


def test_help_lists_commands_and_does_not_import_torch():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "train" in result.output and "predict" in result.output
    # `medconvnext --help` in a fresh interpreter: count what it imported (a module count, not a timing)
    code = ("import sys; sys.argv = ['medconvnext', '--help']\n"
            "from medconvnext.cli.main import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "mods = set(sys.modules)\n"
            "print('MODULES', len(mods), ' '.join(sorted(m for m in ('torch', 'monai', 'numpy', 'matplotlib', "
            "'nibabel', 'SimpleITK', 'sklearn', 'mlflow', 'optuna') if m in mods)))")
    out = subprocess.run([sys.executable, "-c", code],
                         capture_output=True, text=True, encoding="utf-8", check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("MODULES"))
    count, heavy = int(line.split()[1]), line.split()[2:]
    assert heavy == [], f"medconvnext --help imported {heavy}"
    assert count < 600, f"medconvnext --help imported {count} modules"


@pytest.mark.parametrize("command", [[], ["train"], ["cv"], ["predict"], ["evaluate"], ["report"], ["tune"],
                                     ["pretrain"], ["data", "check"], ["export"]])
def test_every_help_shows_defaults_and_choices(command):
    narrow = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "80"})
    assert narrow.exit_code == 0, narrow.output
    lines = narrow.output.splitlines()
    assert max(map(len, lines)) <= 80 and not any("…" in line for line in lines)  # wrapped, never cut
    assert "\\[" not in narrow.output  # no rich-markup escapes left in the plain help
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "220"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # help wraps at 80-100 columns
    if command in (["train"], ["cv"]):
        assert "[default: 30 (train.epochs)]" in text
        assert "--strict" in text and "--no-strict" in text
        assert "<none|mlflow>" in text and "[default: none]" in text
    if command == ["predict"]:
        assert "<whole|sliding|auto>" in text and "<mean|max|logit_mean>" in text
        assert "--tta" in text and "--no-tta" in text
    ours = [line for line in result.output.splitlines() if "Show this message" not in line]  # typer's own --help
    assert not any("<bool>" in line for line in ours)  # flags read as --flag/--no-flag, not <bool>


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "shapes"
    args = ["train", "--data", str(SAMPLE_DATA), "--out", str(out), "--epochs", "2", "--batch-size", "8", *TINY]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


def test_train_prints_the_plan_and_an_eta(tmp_path):
    out = tmp_path / "talk"
    args = ["train", "--data", str(SAMPLE_DATA), "--out", str(out), "--epochs", "1", "--batch-size", "8",
            "--device", "cpu", *TINY]
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = result.output
    assert "spacing" in text and " mm" in text and "input 32 x 32 x 32 voxels" in text and "intensity" in text
    splits = json.loads((out / "splits.json").read_text(encoding="utf-8"))
    assert re.search(rf"train\s+{len(splits['train'])} cases \(cystic \d+, solid \d+\)", text)
    assert re.search(rf"val\s+{len(splits['val'])} cases \(cystic \d+, solid \d+\)", text)
    assert "convnext_atto" in text and "parameters" in text and "device" in text and "cpu" in text
    assert "eta" in text


def test_train_writes_a_complete_run(trained_run):
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for record in records:
        assert {"train_loss", "val_auc", "val_accuracy"} <= record.keys()
        assert 0 <= record["val_accuracy"] <= 1
    for name in ("config.yaml", "dataset.json", "splits.json", "checkpoint_best.safetensors",
                 "checkpoint_last.safetensors", "val_predictions.csv"):
        assert (trained_run / name).is_file(), name
    splits = json.loads((trained_run / "splits.json").read_text(encoding="utf-8"))
    assert len(splits["val"]) == 12 and len(splits["train"]) == 48
    dataset = json.loads((trained_run / "dataset.json").read_text(encoding="utf-8"))
    assert dataset["classes"] == ["cystic", "solid"]
    assert dataset["preprocessing"]["input_size"] == [32, 32, 32]


def test_train_refuses_to_overwrite_a_run(trained_run):
    before = (trained_run / "metrics.jsonl").read_text(encoding="utf-8")
    result = runner.invoke(app, ["train", "--data", str(SAMPLE_DATA), "--out", str(trained_run), "--epochs", "1"])
    assert result.exit_code == 2
    assert "--overwrite" in result.output
    assert (trained_run / "metrics.jsonl").read_text(encoding="utf-8") == before


def test_predict_prints_and_writes_csv(trained_run, tmp_path):
    scans = [str(SAMPLE_DATA / "images" / f"case_00{i}.nii.gz") for i in (0, 1)]
    output = tmp_path / "pred.csv"
    result = runner.invoke(app, ["predict", *scans, "--model", str(trained_run), "--output", str(output)])
    assert result.exit_code == 0, result.output
    assert "case_000.nii.gz" in result.output
    rows = list(csv.DictReader(output.open(encoding="utf-8")))
    assert [r["image"] for r in rows] == scans
    for row in rows:
        assert row["prediction"] in ("cystic", "solid")
        assert float(row["prob_cystic"]) + float(row["prob_solid"]) == pytest.approx(1, abs=1e-5)


def test_predict_table_tells_same_named_scans_apart(trained_run, tmp_path):
    # two scans called scan.nii.gz in two folders: the table shows a/ and b/, not one name twice
    import shutil

    for folder, case in (("a", 0), ("b", 1)):
        (tmp_path / folder).mkdir()
        shutil.copy(SAMPLE_DATA / "images" / f"case_00{case}.nii.gz", tmp_path / folder / "scan.nii.gz")
    scans = [str(tmp_path / folder / "scan.nii.gz") for folder in ("a", "b")]
    result = runner.invoke(app, ["predict", *scans, "--model", str(trained_run)])
    assert result.exit_code == 0, result.output
    assert "a/scan.nii.gz" in result.output and "b/scan.nii.gz" in result.output


def test_predict_json_matches_the_library(trained_run, tmp_path):
    from medconvnext.engine.inference import Predictor

    scan = str(SAMPLE_DATA / "images" / "case_003.nii.gz")
    output = tmp_path / "pred.json"
    assert runner.invoke(app, ["predict", scan, "--model", str(trained_run), "-o", str(output)]).exit_code == 0
    row = json.loads(output.read_text(encoding="utf-8"))[0]
    probs = Predictor.load(trained_run).predict_files([scan])[0]
    assert row["prob_solid"] == pytest.approx(float(probs[1]), abs=1e-5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["predict", "missing.nii.gz", "--model", "RUN"], "missing.nii.gz: no such file"),
        (["predict", "SCAN", "--model", "nowhere"], "no checkpoint found"),
        (["predict", "SCAN", "--model", "RUN", "-o", "x.txt"], "use a .csv or .json"),
        (["train", "--data", "nowhere", "--out", "OUT"], "--data nowhere: no such file or folder"),
        (["train", "--data", "DATA", "--out", "OUT", "--model", "convnext_huge"], "unknown model 'convnext_huge'"),
        (["train", "--data", "DATA", "--out", "OUT", "--set", "train.lr=fast"], "train.lr = 'fast'"),
    ],
)
def test_user_errors_exit_2_with_one_line(trained_run, tmp_path, args, message):
    scan = str(SAMPLE_DATA / "images" / "case_000.nii.gz")
    mapping = {"RUN": str(trained_run), "SCAN": scan, "DATA": str(SAMPLE_DATA), "OUT": str(tmp_path / "o")}
    result = runner.invoke(app, [mapping.get(a, a) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_corrupt_scan_is_a_user_error(trained_run, tmp_path):
    bad = tmp_path / "broken.nii.gz"
    good = (SAMPLE_DATA / "images" / "case_000.nii.gz").read_bytes()
    bad.write_bytes(good[: len(good) // 2])
    result = runner.invoke(app, ["predict", str(bad), "--model", str(trained_run)])
    assert result.exit_code == 2
    assert "broken.nii.gz: cannot read" in result.output


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "medconvnext", "--help"],
                         capture_output=True, text=True, encoding="utf-8")
    assert out.returncode == 0 and "predict" in out.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["train", "--folds", "2"], "No such option: --folds"),
    (["train", "--data", "x", "--epochs", "0"], "Invalid value for '--epochs'"),
    (["predict"], "Missing argument 'SCAN'"),
])
def test_usage_errors_from_the_entry_point_are_one_line_and_exit_2(args, message):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "medconvnext", *args], capture_output=True, text=True)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: ") and message in lines[0] and "--help" in lines[0]


def test_an_input_smaller_than_the_model_is_refused_before_any_write(csv_dataset, tmp_path):
    for command in (["train"], ["cv", "--folds", "2"]):
        out = tmp_path / command[0]
        result = runner.invoke(app, [*command, "--data", str(csv_dataset), "--out", str(out), "--model",
                                     "convnext_atto", "--set", "preprocessing.input_size=[16,16,16]"])
        assert result.exit_code == 2, result.output
        assert "preprocessing.input_size: [16, 16, 16] is smaller than convnext_atto's minimum input" in result.output
        assert not out.exists()
