"""predict's inputs (files, folders, DICOM series, CSV/TSV tables), fold ensembles and test-time augmentation."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SAMPLE_DATA
from helpers_predict import make_checkpoint
from test_data_formats import to_sitk, volume, write_dicom_series, write_nifti
from typer.testing import CliRunner

from medconvnext.cli.main import app
from medconvnext.data.inputs import resolve_prediction_inputs
from medconvnext.engine.inference import TTA_FLIPS, FoldEnsemble, Predictor, infer_volume

runner = CliRunner()
SCANS = [SAMPLE_DATA / "images" / f"case_00{i}.nii.gz" for i in range(3)]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("run") / "checkpoint_best.safetensors").parent


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory) -> Path:
    """Two folds (different weights), found by globbing: no cv.json."""
    root = tmp_path_factory.mktemp("cv")
    for fold in (0, 1):
        make_checkpoint(root / f"fold_{fold}" / "checkpoint_best.safetensors", seed=fold)
    return root


def test_files_folders_dicom_and_tables(tmp_path):
    folder = tmp_path / "scans"
    (folder / "sub").mkdir(parents=True)
    for i, scan in enumerate(SCANS):
        shutil.copy(scan, (folder / "sub" if i == 2 else folder) / scan.name)
    (folder / "notes.txt").write_text("not a scan", encoding="utf-8")
    dicom = write_dicom_series(folder / "series_a", to_sitk(volume()))
    table = tmp_path / "list.tsv"
    table.write_text("image\tlabel\nscans/case_000.nii.gz\tsolid\nscans/sub/case_002.nii.gz\t\n", encoding="utf-8")

    cases = resolve_prediction_inputs([SCANS[1], folder, dicom, table])
    assert [c.images for c in cases] == [
        (str(SCANS[1]),),
        (str(folder / "case_000.nii.gz"),), (str(folder / "case_001.nii.gz"),), (str(dicom),),
        (str(folder / "sub" / "case_002.nii.gz"),),  # the walk is sorted; a DICOM folder is one scan
        (str(dicom),),
        (str((folder / "case_000.nii.gz").resolve()),), (str((folder / "sub" / "case_002.nii.gz").resolve()),),
    ]
    assert [c.label for c in cases[-2:]] == ["solid", None]
    assert cases[3].case_id == "series_a"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.nii.gz", "missing.nii.gz: no such file or folder"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "no scans in this folder"),
        (lambda d: (d / "a.txt").write_text("x", encoding="utf-8") and d / "a.txt", "not a scan"),
        (lambda d: (d / "t.csv").write_text("path\nx.nii.gz\n", encoding="utf-8") and d / "t.csv",
         "missing column 'image'"),
        (lambda d: (d / "t.csv").write_text("image\nnope.nii.gz\n", encoding="utf-8") and d / "t.csv",
         "row 2: image nope.nii.gz not found"),
    ],
)
def test_bad_inputs_are_one_line_user_errors(run, tmp_path, make, message):
    result = runner.invoke(app, ["predict", str(make(tmp_path)), "--model", str(run)])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_unreadable_scan_and_unknown_cam_class(run, tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(SCANS[0].read_bytes()[:200])
    result = runner.invoke(app, ["predict", str(bad), "--model", str(run)])
    assert result.exit_code == 2 and "broken.nii.gz: unreadable" in result.output
    result = runner.invoke(app, ["predict", str(SCANS[0]), "--model", str(run), "--cam", str(tmp_path / "c"),
                                 "--cam-class", "benign"])
    assert result.exit_code == 2 and "--cam-class 'benign': unknown class (classes: cystic, solid)" in result.output
    assert not (tmp_path / "c").exists()


def test_dicom_series_predicts_like_the_same_nifti(run, tmp_path):
    dicom = write_dicom_series(tmp_path / "series", to_sitk(volume()))
    nifti = write_nifti(tmp_path / "same.nii.gz", volume())
    predictor = Predictor.load(run, device="cpu")
    np.testing.assert_allclose(predictor.predict_case(dicom).probabilities,
                               predictor.predict_case(nifti).probabilities, atol=1e-5)


def test_csv_labels_are_carried_to_the_output(run, tmp_path):
    (tmp_path / "img").mkdir()
    shutil.copy(SCANS[0], tmp_path / "img" / SCANS[0].name)
    table = tmp_path / "cases.csv"
    with open(table, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["image", "label", "note"], [f"img/{SCANS[0].name}", "solid", "x"]])
    out = tmp_path / "p.csv"
    result = runner.invoke(app, ["predict", str(table), str(SCANS[1]), "--model", str(run), "-o", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert list(rows[0]) == ["image", "label", "prediction", "prob_cystic", "prob_solid", "threshold", "temperature"]
    assert [r["label"] for r in rows] == ["solid", ""]
    assert "single model" in result.output


def test_fold_ensemble_is_the_mean_of_the_folds(cv_run, tmp_path):
    out = tmp_path / "p.csv"
    result = runner.invoke(app, ["predict", str(SCANS[0]), str(SCANS[2]), "--model", str(cv_run), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "ensemble of 2 folds (mean probability)" in result.output
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    folds = [Predictor.load(cv_run / f"fold_{i}", device="cpu").predict_files(SCANS[::2]) for i in (0, 1)]
    assert not np.allclose(folds[0], folds[1], atol=1e-4)  # the folds do differ
    expected = (folds[0] + folds[1]) / 2
    np.testing.assert_allclose([[float(r["prob_cystic"]), float(r["prob_solid"])] for r in rows], expected, atol=2e-6)
    ensemble = FoldEnsemble.load(cv_run, device="cpu")
    assert [p.parent.name for p in ensemble.checkpoints] == ["fold_0", "fold_1"]
    result = runner.invoke(app, ["predict", str(SCANS[0]), "--model", str(cv_run), "--window-map", str(tmp_path)])
    assert result.exit_code == 2 and "one fold's directory" in result.output


def test_several_runs_are_one_ensemble_of_all_their_models(cv_run, tmp_path):
    single = make_checkpoint(tmp_path / "seed2" / "checkpoint_best.safetensors", seed=2).parent
    out = tmp_path / "p.csv"
    args = ["predict", str(SCANS[0]), str(SCANS[2]), "--model", str(cv_run), "--model", str(single)]
    result = runner.invoke(app, [*args, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "ensemble of 2 runs (3 models, mean probability)" in " ".join(result.output.split())
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    models = [cv_run / "fold_0", cv_run / "fold_1", single]
    each = [Predictor.load(m, device="cpu").predict_files(SCANS[::2]) for m in models]
    expected = np.mean(each, axis=0)  # every model counts once, not every run
    np.testing.assert_allclose([[float(r["prob_cystic"]), float(r["prob_solid"])] for r in rows], expected, atol=2e-6)
    result = runner.invoke(app, [*args, "--threshold", "auto"])
    # a checkpoint keeps no held-out predictions: the ensemble has no operating point to apply
    assert result.exit_code == 2 and "no operating point for this ensemble of 2 runs" in " ".join(result.output.split())


def _symmetric_volume() -> torch.Tensor:
    """(1, 32, 32, 32): a centred ball plus a centred box, unchanged by any flip of the three axes."""
    grid = torch.arange(32, dtype=torch.float32) - 15.5
    d, h, w = torch.meshgrid(grid, grid, grid, indexing="ij")
    ball = (d**2 + 2 * h**2 + 3 * w**2 < 120).float()
    box = ((d.abs() < 4) & (w.abs() < 12)).float()
    return (2 * ball + box)[None]


def test_tta_is_identity_on_a_flip_invariant_volume_and_sees_every_flip(run):
    predictor = Predictor.load(run, device="cpu")
    seen: list[torch.Tensor] = []
    hook = predictor.model.register_forward_pre_hook(lambda module, args: seen.append(args[0][0].clone()))
    settings, size = predictor.inference, predictor.preprocessing.input_size
    try:
        symmetric = _symmetric_volume()
        for dims in TTA_FLIPS:
            assert torch.equal(symmetric.flip(dims) if dims else symmetric, symmetric)
        plain = infer_volume(predictor.model, symmetric, settings, size, predictor.device, False).probabilities
        tta = infer_volume(predictor.model, symmetric, settings, size, predictor.device, False, tta=True)
        np.testing.assert_allclose(tta.probabilities, plain, atol=1e-6)

        seen.clear()
        asymmetric = torch.randn(1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
        flipped = infer_volume(predictor.model, asymmetric, settings, size, predictor.device, False, tta=True)
    finally:
        hook.remove()
    assert len(TTA_FLIPS) == 8 and len(set(TTA_FLIPS)) == 8
    assert len(seen) == 8
    for dims, x in zip(TTA_FLIPS, seen, strict=True):
        assert torch.equal(x, asymmetric.flip(dims) if dims else asymmetric), dims
    singles = [infer_volume(predictor.model, x, settings, size, predictor.device, False).probabilities for x in seen]
    np.testing.assert_allclose(flipped.probabilities, np.mean(singles, axis=0), atol=1e-6)
    assert not np.allclose(singles[0], singles[1], atol=1e-6)  # the flips change the output of this model


def test_tta_from_the_cli(run):
    result = runner.invoke(app, ["predict", str(SCANS[0]), "--model", str(run), "--tta"])
    assert result.exit_code == 0, result.output
    assert "test-time augmentation (8 flips)" in " ".join(result.output.split())
