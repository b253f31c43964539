"""bench/testset_limits.py: tables aligned by file name, bootstrap intervals, the ensemble of every table."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import REPO
from sklearn.metrics import roc_auc_score

from medconvnext.results.table import write_prediction_table

sys.path.insert(0, str(REPO / "bench"))
import testset_limits  # noqa: E402


def test_tables_of_the_same_cases_in_other_folders_and_orders(tmp_path):
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 20)
    p1 = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, 40), 0.01, 0.99)
    p2 = np.clip(0.4 + 0.2 * y + rng.normal(0, 0.2, 40), 0.01, 0.99)
    labels = [str(v) for v in y]
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    write_prediction_table(first, [f"/d28/case{i}.nii.gz" for i in range(40)], np.stack([1 - p1, p1], 1),
                           ["0", "1"], labels)
    order = rng.permutation(40)  # the other table lists the 64³ copies, shuffled
    write_prediction_table(second, [f"/d64/case{i}.nii.gz" for i in order], np.stack([1 - p2, p2], 1)[order],
                           ["0", "1"], [labels[i] for i in order])
    report = testset_limits.main([str(first), str(second), "--n-boot", "200"])
    a, b = report["rows"]
    assert a["auc"] == pytest.approx(roc_auc_score(y, p1), abs=1e-5)
    assert b["auc"] == pytest.approx(roc_auc_score(y, p2), abs=1e-5)
    assert a["auc_minus_first_ci"] == [0.0, 0.0]
    low, high = b["auc_minus_first_ci"]
    assert low < b["auc"] - a["auc"] < high
    assert a["auc_ci"][0] < a["auc"] < a["auc_ci"][1]
    assert report["mean_of_all"]["auc"] == pytest.approx(roc_auc_score(y, (p1 + p2) / 2), abs=1e-5)
