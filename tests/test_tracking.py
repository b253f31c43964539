"""--tracking mlflow: params, per-epoch metrics and the run folder in a local MLflow store (in tmp_path)."""

from __future__ import annotations

import pytest
from conftest import SAMPLE_DATA
from typer.testing import CliRunner

from medconvnext.cli.main import app
from medconvnext.tracking import CallbackGroup, flatten_params, resolve_tracking_uri

runner = CliRunner()
TINY = ["--set", "model.args.depths=[1,1,1,1]", "--set", "model.args.dims=[8,16,32,64]"]


def test_flatten_and_uri(tmp_path):
    assert flatten_params({"train": {"lr": 0.1, "args": {}}, "x": [1, 2]}) == {
        "train.lr": "0.1", "train.args": "{}", "x": "[1, 2]"}
    uri, artifacts = resolve_tracking_uri(str(tmp_path / "store"))
    assert uri == f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    assert artifacts == (tmp_path / "store" / "artifacts").as_uri()
    assert resolve_tracking_uri("http://host:5000") == ("http://host:5000", "")


def test_callback_group_forwards_on_plan_only_to_members_that_have_it():
    seen = []

    class WithPlan:
        def on_plan(self, plan):
            seen.append(("plan", plan))

        def on_start(self, total, steps):
            seen.append(("start", total))

        def on_step(self, epoch, step, loss):
            pass

        def on_epoch_end(self, record):
            seen.append(("end", record["epoch"]))

    group = CallbackGroup(WithPlan(), None)
    group.on_plan({"a": 1})
    group.on_start(3, 2)
    group.on_epoch_end({"epoch": 1})
    assert seen == [("plan", {"a": 1}), ("start", 3), ("end", 1)]


def test_train_logs_params_metrics_and_the_run_folder(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    store = tmp_path / "mlruns"
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data", str(SAMPLE_DATA), "--out", str(out), "--epochs", "2",
                                 "--batch-size", "8", "--device", "cpu", *TINY, "--tracking", "mlflow",
                                 "--tracking-uri", str(store), "--experiment", "tests"])
    assert result.exit_code == 0, result.output
    uri, _ = resolve_tracking_uri(str(store))
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("tests")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["model.name"] == "convnext_atto"
    assert run.data.params["train.epochs"] == "2" and run.data.params["plan.input_size"] == "[32, 32, 32]"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_auc")] == [1, 2]
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2
    artefacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.jsonl", "checkpoint_best.safetensors", "splits.json"} <= artefacts
    assert "training_state.pt" not in artefacts  # resume-only state stays out


def test_tracking_without_a_store_is_a_user_error(tmp_path):
    pytest.importorskip("mlflow")
    bad = tmp_path / "file"
    bad.write_text("not a folder", encoding="utf-8")
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data", str(SAMPLE_DATA), "--out", str(out), "--epochs", "1", *TINY,
                                 "--tracking", "mlflow", "--tracking-uri", str(bad)])
    assert result.exit_code == 2, result.output
    assert "--tracking-uri" in result.output
    assert not out.exists()


def test_cv_is_a_parent_run_with_one_nested_run_per_fold(tmp_path, csv_dataset):
    mlflow = pytest.importorskip("mlflow")
    store = tmp_path / "mlruns"
    out = tmp_path / "cvrun"
    result = runner.invoke(app, ["cv", "--data", str(csv_dataset), "--out", str(out), "--folds", "2", "--epochs", "1",
                                 "--batch-size", "4", "--device", "cpu", "--n-boot", "0", *TINY,
                                 "--tracking", "mlflow", "--tracking-uri", str(store)])
    assert result.exit_code == 0, result.output
    client = mlflow.MlflowClient(resolve_tracking_uri(str(store))[0])
    experiment = client.get_experiment_by_name("medconvnext")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"cvrun", "fold_0", "fold_1"}
    parent = runs["cvrun"].info.run_id
    for fold in ("fold_0", "fold_1"):
        assert runs[fold].data.tags["mlflow.parentRunId"] == parent
        assert runs[fold].info.status == "FINISHED"
        assert "checkpoint_best.safetensors" in {a.path for a in client.list_artifacts(runs[fold].info.run_id)}
    top = {a.path for a in client.list_artifacts(parent)}
    assert {"report.html", "cv_summary.json", "oof_predictions.csv", "calibration.json"} <= top
