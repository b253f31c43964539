"""DDP through torchrun: 2 gloo processes on CPU; the logged validation equals a one-process evaluation."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_resume import TINY

from medconvnext.engine.validation import evaluate_run

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
    single = evaluate_run(run, "last")
    splits = json.loads((run / "splits.json").read_text(encoding="utf-8"))
    assert sorted(single["case_ids"]) == sorted(splits["val"])
    assert abs(single["loss"] - records[-1]["val_loss"]) < 1e-5
    assert single["metrics"]["accuracy"] == records[-1]["val_accuracy"]
    assert single["metrics"]["auc"] == pytest.approx(records[-1]["val_auc"])
    predictions = (run / "val_predictions.csv").read_text(encoding="utf-8").splitlines()
    assert len(predictions) - 1 == len(splits["val"])
