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
    assert RunDir(copy).remove_run_files() == [] and not any(copy.iterdir())  # the manifest lists every file
    (out / "my_notes.md").write_text("epoch 1 looked fine\n", encoding="utf-8")
    (out / "eval_test").mkdir()
    (out / "eval_test" / "predictions.csv").write_text("image\n", encoding="utf-8")  # by hand, not by evaluate
    (out / "eval_test" / "figure_for_paper.svg").write_text("<svg/>", encoding="utf-8")
    again = runner.invoke(app, ["train", "--data", str(data), "--out", str(out), *TINY])
    assert again.exit_code == 2 and "already holds a run; pass --overwrite" in again.output
    old_best = (out / "checkpoint_best.safetensors").read_bytes()
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(out), *TINY, "--overwrite",
                                 "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "kept 3 that medconvnext did not write" in result.output  # the message names what stayed
    assert "eval_test/figure_for_paper.svg" in result.output and "my_notes.md" in result.output
    assert (out / "my_notes.md").read_text(encoding="utf-8") == "epoch 1 looked fine\n"
    assert (out / "eval_test" / "figure_for_paper.svg").is_file()
    assert (out / "eval_test" / "predictions.csv").read_text(encoding="utf-8") == "image\n"
    assert (out / "checkpoint_best.safetensors").read_bytes() != old_best


def test_overwrite_never_deletes_or_replaces_a_file_the_user_changed(tmp_path):
    data = good_dataset(tmp_path / "data")
    out = tmp_path / "run"
    assert runner.invoke(app, ["train", "--data", str(data), "--out", str(out), *TINY]).exit_code == 0
    edited = (out / "metrics.jsonl").read_text(encoding="utf-8") + '{"epoch": 99, "note": "mine"}\n'
    (out / "metrics.jsonl").write_text(edited, encoding="utf-8")
    before = _files(out)
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(out), *TINY, "--overwrite"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "metrics.jsonl changed since medconvnext wrote it" in lines[0]
    assert _files(out) == before  # refused before anything was deleted


def test_a_folder_of_run_like_names_without_a_manifest_is_never_deleted_from(tmp_path):
    """The issue's folder: the user's own config.yaml, report.md, predictions.csv and notes.txt."""
    data = good_dataset(tmp_path / "data")
    out = tmp_path / "mine"
    out.mkdir()
    for name in ("config.yaml", "report.md", "predictions.csv", "notes.txt"):
        (out / name).write_text(f"my {name}\n", encoding="utf-8")
    before = _files(out)
    for extra in ([], ["--overwrite"]):
        result = runner.invoke(app, ["train", "--data", str(data), "--out", str(out), *TINY, *extra])
        assert result.exit_code == 2, result.output
        assert len([line for line in result.output.splitlines() if line.strip()]) == 1
        assert _files(out) == before
    assert "no medconvnext_manifest.json" in result.output


def test_remove_run_files_deletes_only_what_the_manifest_lists(tmp_path):
    from medconvnext.fileio import atomic_write, start_manifest

    run = RunDir(tmp_path / "cv")
    start_manifest(run.root, "cv")
    written = ["cv.json", "oof_predictions.csv", "report.html", "fold_0/config.yaml", "fold_0/checkpoint_best.json",
               "repeat_1/fold_0/metrics.jsonl"]
    for name in written:
        start_manifest((run.root / name).parent, "train")  # a fold registers with the cv above it
        atomic_write(run.root / name, lambda tmp: tmp.write_text("x", encoding="utf-8"))
    (run.root / "fold_0" / ".checkpoint_last.safetensors.abc123.tmp").write_text("half", encoding="utf-8")
    kept = ["README.txt", "fold_0/my_plot.png", "data/labels.csv", "fold_10_backup/config.yaml"]
    for name in kept:
        (run.root / name).parent.mkdir(parents=True, exist_ok=True)
        (run.root / name).write_text("x", encoding="utf-8")
    (run.root / "report.html").write_text("edited by hand", encoding="utf-8")  # changed since: kept
    assert [p.as_posix() for p in run.remove_run_files()] == sorted(kept + ["report.html"])
    assert sorted(_files(run.root)) == sorted(kept + ["report.html"])
    assert not (run.root / "repeat_1").exists()


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


def _removes_everything_it_wrote(run: Path, tmp_path: Path, mine: dict[str, bytes]) -> None:
    """A copy of the run, its manifest-listed files removed: only the user's files are left."""
    copy = tmp_path / "copy_of_run"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(run, copy)
    assert sorted(p.as_posix() for p in RunDir(copy).remove_run_files()) == sorted(mine)
    assert _files(copy) == mine


def test_cv_and_evaluate_record_every_file_and_keep_the_users(tmp_path):
    data = good_dataset(tmp_path / "data")
    out = tmp_path / "cv"
    cv = ["cv", "--data", str(data), "--out", str(out), *TINY, "--folds", "2", "--n-boot", "0"]
    assert runner.invoke(app, cv).exit_code == 0
    evaluate = ["evaluate", str(out), "--data", str(data), "--split", "all", "--n-boot", "0", "--device", "cpu"]
    assert runner.invoke(app, evaluate).exit_code == 0  # into cv/eval_all, registered with the cv's manifest
    mine = {"notes.txt": b"mine", "fold_0/my_plot.png": b"png", "eval_all/for_paper.svg": b"<svg/>"}
    for name, content in mine.items():
        (out / name).write_bytes(content)
    _removes_everything_it_wrote(out, tmp_path, mine)
    assert runner.invoke(app, evaluate).exit_code == 0  # an earlier evaluation is replaced, the user's file kept
    assert (out / "eval_all" / "for_paper.svg").read_bytes() == b"<svg/>"
    result = runner.invoke(app, [*cv, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert {name: (out / name).read_bytes() for name in mine} == mine
    assert (out / "fold_1" / "checkpoint_best.safetensors").is_file()


def test_pretrain_records_every_file(tmp_path):
    data = good_dataset(tmp_path / "data")
    out = tmp_path / "pre"
    args = ["pretrain", "--data", str(data), "--out", str(out), "--epochs", "1", "--model", "convnext_atto",
            "--set", "model.args.dims=[8,16,24,32]", "--set", "model.args.depths=[1,1,1,1]", "--set",
            "model.args.kernel_size=3", "--set", "preprocessing.input_size=[32,32,32]", "--device", "cpu",
            "--batch-size", "4", "--set", "train.warmup_epochs=0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (out / "notes.txt").write_bytes(b"mine")
    _removes_everything_it_wrote(out, tmp_path, {"notes.txt": b"mine"})
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "already holds a run; pass --overwrite" in again.output
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0
    assert (out / "notes.txt").read_bytes() == b"mine"
