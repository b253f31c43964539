"""medconvnext tune: a 2-trial study on tiny volumes, resumed to 3 trials; best_config.yaml is a train config."""

from __future__ import annotations

import pytest
from conftest import make_dataset
from typer.testing import CliRunner

from medconvnext.cli.main import app
from medconvnext.config import load_config
from medconvnext.errors import UserError
from medconvnext.tuning import DEFAULT_SPACE, load_space

runner = CliRunner()
TINY = ["--set", "model.args.depths=[1,1,1,1]", "--set", "model.args.dims=[8,16,32,64]",
        "--set", "data.val_fraction=0.34"]
SPACE = """\
train.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
train.ema: {type: categorical, choices: [false, true]}
"""


def test_default_space_is_valid_and_bad_spaces_name_the_field(tmp_path):
    assert load_space(None) == DEFAULT_SPACE
    bad = tmp_path / "bad.yaml"
    bad.write_text("train.nonsense: {type: float, low: 0, high: 1}\n", encoding="utf-8")
    with pytest.raises(UserError, match="train.nonsense"):
        load_space(bad)
    bad.write_text("train.lr: {type: float, low: 1, high: 0}\n", encoding="utf-8")
    with pytest.raises(UserError, match="low <= high"):
        load_space(bad)
    bad.write_text("data.augment: {type: categorical}\n", encoding="utf-8")
    with pytest.raises(UserError, match="choices"):
        load_space(bad)


def test_tune_two_trials_then_resume_adds_one(tmp_path):
    pytest.importorskip("optuna")
    data = make_dataset(tmp_path / "data", n=12, test=0)
    space = tmp_path / "space.yaml"
    space.write_text(SPACE, encoding="utf-8")
    out = tmp_path / "study"
    args = ["tune", "--data", str(data), "--out", str(out), "--space", str(space), "--epochs", "2",
            "--batch-size", "4", "--device", "cpu", *TINY]
    result = runner.invoke(app, [*args, "--trials", "2"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert (out / "study.db").is_file() and (out / "trial_000" / "metrics.jsonl").is_file()
    assert (out / "trial_001" / "checkpoint_best.safetensors").is_file()
    assert "trials" in result.output and "COMPLETE" in result.output
    first = (out / "trial_000" / "config.yaml").read_text(encoding="utf-8")
    import optuna

    study = optuna.load_study(study_name="medconvnext", storage=f"sqlite:///{out / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    params = [t.params for t in study.trials]
    # resume: the same command with --trials 3 runs one more trial and keeps the first two
    result = runner.invoke(app, [*args, "--trials", "3"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="medconvnext", storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.trials) == 3 and [t.params for t in study.trials[:2]] == params
    assert study.trials[2].params != params[0]  # a resumed study does not replay the first samples
    assert (out / "trial_002" / "metrics.jsonl").is_file()
    assert (out / "trial_000" / "config.yaml").read_text(encoding="utf-8") == first  # not retrained
    # best_config.yaml: the best trial's values, a config `train --config` reads
    best = study.best_trial
    cfg = load_config(out / "best_config.yaml")
    assert cfg.train.lr == pytest.approx(best.params["train.lr"]) and cfg.train.ema == best.params["train.ema"]
    assert cfg.model.args["dims"] == [8, 16, 32, 64] and cfg.train.epochs == 2
    # nothing more to do: the study already has 3 finished trials
    result = runner.invoke(app, [*args, "--trials", "3"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert len(optuna.load_study(study_name="medconvnext", storage=f"sqlite:///{out / 'study.db'}").trials) == 3
    # the study's manifest lists every file it wrote (trials included); a folder of other files is never used
    import shutil

    from medconvnext.rundir import RunDir

    (out / "notes.txt").write_text("mine", encoding="utf-8")
    shutil.copytree(out, tmp_path / "copy")
    assert [p.as_posix() for p in RunDir(tmp_path / "copy").remove_run_files()] == ["notes.txt"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine", encoding="utf-8")
    result = runner.invoke(app, ["tune", "--data", str(data), "--out", str(mine), "--trials", "1"])
    assert result.exit_code == 2 and "not a medconvnext study" in result.output
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_pruning_stops_a_trial_below_the_median():
    optuna = pytest.importorskip("optuna")
    from medconvnext.tuning import _Pruning

    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    good = study.ask()
    for epoch in (1, 2):
        _Pruning(good).on_epoch_end({"epoch": epoch, "val_auc": 0.9})
    study.tell(good, 0.9)
    weak = study.ask()
    with pytest.raises(optuna.TrialPruned, match="below the median"):
        _Pruning(weak).on_epoch_end({"epoch": 1, "val_auc": 0.5})
    assert weak.user_attrs["epochs"] == 1
