"""DDP through torchrun: 2 gloo processes on CPU; the logged validation equals a one-process evaluation."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file
from test_resume import TINY

from medconvnext.engine.inference import Predictor
from medconvnext.engine.validation import validate_run
from medconvnext.results.table import read_predictions

TORCHRUN = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))


@pytest.mark.skipif(not Path(TORCHRUN).exists(), reason="torchrun not installed")
def test_two_process_gloo_run_matches_single_process_evaluation(csv_dataset, tmp_path):
    run = tmp_path / "run"
    # 12 cases -> 3 validation cases: uneven across 2 ranks, so every case must still count exactly once
    args = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "medconvnext", "train", "--data",
            str(csv_dataset), "--out", str(run), "--epochs", "2", "--batch-size", "2", "--device", "cpu", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, capture_output=True, text=True, encoding="utf-8", timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert not list(run.glob("*.tmp"))
    single = validate_run(run, "last")
    splits = json.loads((run / "splits.json").read_text(encoding="utf-8"))
    assert sorted(single["case_ids"]) == sorted(splits["val"])
    assert abs(single["loss"] - records[-1]["val_loss"]) < 1e-5
    assert single["metrics"]["accuracy"] == records[-1]["val_accuracy"]
    assert single["metrics"]["auc"] == pytest.approx(records[-1]["val_auc"])
    predictions = (run / "val_predictions.csv").read_text(encoding="utf-8").splitlines()
    assert len(predictions) - 1 == len(splits["val"])
    # the TTA pass is shared by the ranks (2 + 1 cases) and written once by rank 0: every case once, as one
    # process predicts it with the best checkpoint
    tta = read_predictions(run / "val_predictions_tta.csv")
    assert sorted(tta.images) == sorted(splits["val"])
    cases = {c["case_id"]: c["images"] for c in json.loads((run / "dataset.json").read_text("utf-8"))["cases"]}
    expected = Predictor.load(run, device="cpu", tta=True).predict_files([cases[i] for i in tta.images])
    np.testing.assert_allclose(tta.probs, expected, atol=2e-6)


@pytest.mark.skipif(not Path(TORCHRUN).exists(), reason="torchrun not installed")
def test_two_process_gloo_pretrain_writes_one_run_that_train_init_loads(csv_dataset, tmp_path):
    run = tmp_path / "pre"
    model_args = ["--set", "model.args.dims=[8,16,24,32]", "--set", "model.args.depths=[1,1,1,1]",
                  "--set", "preprocessing.input_size=[32,32,32]"]
    args = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "medconvnext", "pretrain", "--data",
            str(csv_dataset), "--out", str(run), "--epochs", "2", "--batch-size", "2", "--device", "cpu", *model_args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, capture_output=True, text=True, encoding="utf-8", timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("done:") == 1  # rank 0 reports, once
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and all(r["loss"] > 0 for r in records)
    assert not list(run.glob("*.tmp"))
    ft = tmp_path / "ft"
    proc = subprocess.run([sys.executable, "-m", "medconvnext", "train", "--data", str(csv_dataset), "--out", str(ft),
                           "--epochs", "1", "--batch-size", "2", "--device", "cpu", "--init", str(run), *model_args],
                          capture_output=True, text=True, encoding="utf-8", timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    encoder = load_file(str(run / "checkpoint_encoder.safetensors"))
    loaded = json.loads((ft / "init.json").read_text(encoding="utf-8"))["loaded"]
    assert loaded == len([k for k in encoder if not k.startswith("head.")]) > 0


@pytest.mark.skipif(not Path(TORCHRUN).exists(), reason="torchrun not installed")
def test_two_process_gloo_cv_writes_one_set_of_pooled_tables_and_reports_once(csv_dataset, tmp_path):
    """cv under torchrun: rank 0 creates the folder and cv.json before any rank trains (no rank reads a half-written
    one), every fold is trained by both ranks, and only rank 0 writes the out-of-fold tables and the report."""
    out = tmp_path / "cv"
    args = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "medconvnext", "cv", "--data", str(csv_dataset),
            "--out", str(out), "--folds", "2", "--epochs", "1", "--batch-size", "2", "--device", "cpu",
            "--n-boot", "0", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, capture_output=True, text=True, encoding="utf-8", timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("done: report in") == 1 and proc.stdout.count("│ out-of-fold") == 1
    oof = read_predictions(out / "oof_predictions.csv")
    assert sorted(Path(i).name for i in oof.images) == [f"c{i:02d}.nii.gz" for i in range(12)]  # every case once
    assert sorted(read_predictions(out / "oof_predictions_tta.csv").images) == sorted(oof.images)
    assert (out / "fold_0" / "checkpoint_best.safetensors").is_file() and not list(out.rglob("*.tmp"))
