"""``--overwrite`` deletes only what medconvnext wrote; a folder that is not a run is never written into."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from bad_inputs import good_dataset
from typer.testing import CliRunner

from medconvnext.cli.main import app
from medconvnext.errors import UserError
from medconvnext.rundir import RunDir

runner = CliRunner()
TINY = ["--model", "convmixer_128_4", "--set", "model.args.dim=8", "--set", "model.args.depth=1", "--device", "cpu",
        "--epochs", "1", "--batch-size", "4"]


def _users_folder(folder: Path) -> dict[str, bytes]:
    """A thesis folder: a document and a notes/ subfolder."""
    (folder / "notes").mkdir(parents=True)
    (folder / "my_thesis.docx").write_bytes(b"PK\x03\x04 four years of work")
    (folder / "notes" / "ideas.txt").write_text("try a bigger model\n", encoding="utf-8")
    return _files(folder)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("command", ["train", "cv"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_that_is_not_a_run_is_refused_and_kept(tmp_path, command, overwrite):
    data = good_dataset(tmp_path / "data")
    out = tmp_path / "thesis"
    before = _users_folder(out)
    extra = ["--folds", "2"] if command == "cv" else []
    result = runner.invoke(app, [command, "--data", str(data), "--out", str(out), *TINY, *extra,
                                 *(["--overwrite"] if overwrite else [])])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "not empty and not a medconvnext run" in lines[0]
    assert "my_thesis.docx" in lines[0] and "notes/" in lines[0] and "already holds a run" not in lines[0]
    assert _files(out) == before


def test_overwrite_replaces_a_run_and_keeps_the_users_files(tmp_path):
    data = good_dataset(tmp_path / "data")
    out = tmp_path / "run"
    assert runner.invoke(app, ["train", "--data", str(data), "--out", str(out), *TINY]).exit_code == 0
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert RunDir(copy).remove_run_files() == [] and not any(copy.iterdir())  # every file of a run is known
    (out / "my_notes.md").write_text("epoch 1 looked fine\n", encoding="utf-8")
    (out / "eval_test").mkdir()
    (out / "eval_test" / "predictions.csv").write_text("image\n", encoding="utf-8")
    (out / "eval_test" / "figure_for_paper.svg").write_text("<svg/>", encoding="utf-8")
    again = runner.invoke(app, ["train", "--data", str(data), "--out", str(out), *TINY])
    assert again.exit_code == 2 and "already holds a run; pass --overwrite" in again.output
    stale = (out / "metrics.jsonl").read_text(encoding="utf-8")
    (out / "metrics.jsonl").write_text(stale + '{"epoch": 99}\n', encoding="utf-8")  # must not survive
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(out), *TINY, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert (out / "my_notes.md").read_text(encoding="utf-8") == "epoch 1 looked fine\n"
    assert (out / "eval_test" / "figure_for_paper.svg").is_file()
    assert not (out / "eval_test" / "predictions.csv").exists()  # written by evaluate: a run file
    assert '"epoch": 99' not in (out / "metrics.jsonl").read_text(encoding="utf-8")
    assert (out / "checkpoint_best.safetensors").is_file()


def test_remove_run_files_knows_every_kind_of_run_file(tmp_path):
    run = RunDir(tmp_path / "cv")
    written = ["cv.json", "splits.json", "oof_predictions.csv", "oof_predictions_tta.csv", "cv_summary.json",
               "report.html", "roc.png", "fold_0/config.yaml", "fold_0/checkpoint_best.safetensors",
               "fold_0/checkpoint_best.json", "fold_0/val_predictions.csv", "fold_0/val_predictions_tta.csv",
               "fold_0/.checkpoint_last.safetensors.abc123.tmp", "fold_0/tensorboard/events.out.tfevents.1.host",
               "repeat_1/fold_0/metrics.jsonl", "repeat_1/fold_0/done.json"]
    kept = ["README.txt", "fold_0/my_plot.png", "data/labels.csv", "fold_10_backup/config.yaml"]
    for name in written + kept:
        (run.root / name).parent.mkdir(parents=True, exist_ok=True)
        (run.root / name).write_text("x", encoding="utf-8")
    run.prepare_new(overwrite=True)
    assert sorted(_files(run.root)) == sorted(kept)
    assert not (run.root / "repeat_1").exists() and not (run.root / "fold_0" / "tensorboard").exists()


def test_check_new_messages(tmp_path):
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(UserError, match="is a file, not a folder"):
        RunDir(tmp_path / "file").check_new(overwrite=True)
    RunDir(tmp_path / "new").check_new(overwrite=False)  # a new or empty folder is fine
    (tmp_path / "empty").mkdir()
    RunDir(tmp_path / "empty").prepare_new(overwrite=False)
    assert (tmp_path / "empty").is_dir()


def test_evaluate_out_refuses_a_folder_of_other_files(tmp_path):
    from helpers_predict import make_checkpoint

    data = good_dataset(tmp_path / "data", n=4)
    run = make_checkpoint(tmp_path / "run" / "checkpoint_best.safetensors", classes=["a", "b"]).parent
    out = tmp_path / "thesis"
    before = _users_folder(out)
    result = runner.invoke(app, ["evaluate", str(run), "--data", str(data), "--split", "all", "--out", str(out),
                                 "--n-boot", "0", "--device", "cpu"])
    assert result.exit_code == 2 and "not empty and not a medconvnext run" in result.output
    assert _files(out) == before


def test_resume_checks_the_data_again(tmp_path):
    from bad_inputs import write_bad

    data = good_dataset(tmp_path / "data")
    out = tmp_path / "run"
    assert runner.invoke(app, ["train", "--data", str(data), "--out", str(out), *TINY]).exit_code == 0
    bad, reason = write_bad(tmp_path, "nan_voxel")
    (data / "img" / "c03.nii.gz").write_bytes(bad.read_bytes())  # replaced after the run started
    before = _files(out)
    result = runner.invoke(app, ["train", "--resume", str(out), "--epochs", "2"])
    assert result.exit_code == 2, result.output
    assert "c03.nii.gz: 1 NaN/Inf voxel(s)" in result.output and "the run's data changed" in result.output
    assert _files(out) == before
