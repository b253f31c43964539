"""Patch training, sliding-window validation and predict (--inference, --window-map) on tiny data."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import torch
from test_resume import tiny_config
from typer.testing import CliRunner

from medconvnext.cli.main import app
from medconvnext.engine.inference import Predictor
from medconvnext.engine.trainer import train

runner = CliRunner()


def test_sliding_validation_and_predict_window_map(csv_dataset, tmp_path):
    run = tmp_path / "run"
    config = tiny_config(csv_dataset, epochs=1, patches="foreground")  # foreground-weighted 12^3 patches
    config.preprocessing.input_size = [12, 12, 12]  # smaller than the volumes, so they are tiled
    config.inference.mode = "sliding"
    train(config, run)
    record = json.loads((run / "metrics.jsonl").read_text(encoding="utf-8"))
    assert record["val_loss"] > 0

    scan = str(csv_dataset / "img" / "c01.nii.gz")
    maps, out = tmp_path / "maps", tmp_path / "p.csv"
    result = runner.invoke(app, ["predict", scan, "--model", str(run), "--inference", "sliding", "--overlap", "0.5",
                                 "--window-map", str(maps), "-o", str(out)])
    assert result.exit_code == 0, result.output
    grid = nib.load(maps / "c01_windows.nii.gz")
    assert grid.ndim == 4 and grid.shape[3] == 2 and min(grid.shape[:3]) >= 2
    probs = np.asarray(grid.dataobj)
    np.testing.assert_allclose(probs.sum(axis=3), 1.0, atol=1e-5)
    with open(out, encoding="utf-8") as f:
        row = next(csv.DictReader(f))
    # mean aggregation: the case probability is the mean of the window probabilities
    lesion = json.loads((run / "dataset.json").read_text(encoding="utf-8"))["classes"].index("lesion")
    assert abs(float(row["prob_lesion"]) - probs[..., lesion].mean()) < 1e-4

    predictor = Predictor.load(run, device="cpu")
    predictor.inference.mode, predictor.inference.overlap = "sliding", 0.5
    prediction = predictor.predict_case(scan)
    volume = predictor.preprocess(scan, crop=False)
    np.testing.assert_allclose(grid.affine, prediction.windows.map_affine(volume.affine), atol=1e-5)
    assert torch.is_tensor(prediction.windows.window_probabilities)

    for args, field in ((["--inference", "tiles"], "--inference"), (["--aggregation", "median"], "--aggregation"),
                        (["--roi-size", "a,b"], "--roi-size")):
        result = runner.invoke(app, ["predict", scan, "--model", str(run), *args])
        assert result.exit_code == 2 and field in result.output, result.output
