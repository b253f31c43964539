"""medconvnext export: TorchScript round trip, ONNX (when onnxruntime is installed), preprocessing JSON, errors."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from helpers_predict import make_checkpoint
from typer.testing import CliRunner

from medconvnext.cli.main import app
from medconvnext.engine.checkpoint import load_checkpoint
from medconvnext.engine.export import export_model

runner = CliRunner()
HAVE_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript", "onnxruntime"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("run") / "checkpoint_best.safetensors").parent


def _eager(run, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return load_checkpoint(run / "checkpoint_best.safetensors").build_model()(x).numpy()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.load, deprecated since torch 2.10
def test_torchscript_round_trip_and_preprocessing_json(run, tmp_path):
    out = tmp_path / "deploy" / "lesions.pt"
    result = runner.invoke(app, ["export", str(run), "--format", "torchscript", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "max abs diff" in result.output
    loaded = torch.jit.load(str(out))
    x = torch.randn(3, 1, 32, 32, 32, generator=torch.Generator().manual_seed(5))  # another batch size
    with torch.no_grad():
        np.testing.assert_allclose(loaded(x).numpy(), _eager(run, x), atol=1e-5)
    info = json.loads((tmp_path / "deploy" / "lesions.preprocessing.json").read_text(encoding="utf-8"))
    assert info["classes"] == ["cystic", "solid"]
    assert info["input"]["shape"] == ["N", 1, 32, 32, 32]
    pre = info["preprocessing"]
    assert (pre["orientation"], pre["spacing"], pre["input_size"], pre["intensity"]) == (
        "RAS", [1.5, 1.5, 1.5], [32, 32, 32], "zscore")
    assert info["check"]["max_abs_diff_vs_eager"] <= 1e-4


@pytest.mark.skipif(not HAVE_ONNX, reason="onnx/onnxscript/onnxruntime not installed (pip install medconvnext[onnx])")
def test_onnx_export_has_a_dynamic_batch_axis(run, tmp_path):
    import onnxruntime

    result = export_model(run, "onnx", tmp_path / "m.onnx")
    assert result.max_abs_diff <= 1e-4 and result.preprocessing_path == tmp_path / "m.preprocessing.json"
    session = onnxruntime.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 1, 32, 32, 32, generator=torch.Generator().manual_seed(6))
    (logits,) = session.run(["logits"], {"image": x.numpy()})
    np.testing.assert_allclose(logits, _eager(run, x), atol=1e-4)


def test_onnx_without_the_extras_is_a_one_line_error(run, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    result = runner.invoke(app, ["export", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2
    assert "pip install medconvnext[onnx]" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "m.onnx").exists()


def test_export_errors(run, tmp_path):
    result = runner.invoke(app, ["export", str(run), "--format", "tflite"])
    assert result.exit_code == 2 and "Invalid value for '--format'" in result.output and "'tflite'" in result.output
    for fold in (0, 1):
        make_checkpoint(tmp_path / "cv" / f"fold_{fold}" / "checkpoint_best.safetensors")
    result = runner.invoke(app, ["export", str(tmp_path / "cv")])
    assert result.exit_code == 2 and "export one fold" in result.output
