"""Export a trained model for deployment: TorchScript (``torch.jit.trace``) or ONNX, plus its preprocessing as JSON.

The exported model maps the *preprocessed* tensor, (N, C, D, H, W) float32 at the run's input size, to
(N, K) logits (softmax over axis 1 gives the class probabilities); a multiple-instance model
(``train.patches=mil``) takes (N, M, C, D, H, W) instead: each volume's M sliding windows, pooled with its
attention. The preprocessing that produces that tensor (orientation, spacing, intensity normalisation,
pad/crop size, channel order) and the class names are written beside the model as
``<model file stem>.preprocessing.json``. After export the model is loaded back
and run on a random batch; its outputs must match the eager model's to ``tolerance`` (1e-4 by default).

ONNX needs the optional dependencies ``onnx``, ``onnxscript`` and ``onnxruntime``
(``pip install medconvnext[onnx]``); the batch axis is dynamic.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medconvnext.choices import ExportFormat, choices
from medconvnext.data.pipeline import PreprocessingPipeline
from medconvnext.data.preprocessing import PreprocessingPlan
from medconvnext.engine.checkpoint import atomic_write, load_checkpoint
from medconvnext.errors import UserError
from medconvnext.fileio import remove
from medconvnext.rundir import RunDir, check_output, find_checkpoint, fold_checkpoints, glob_fold_checkpoints

EXPORT_FORMATS = choices(ExportFormat)
DEFAULT_NAMES = {"torchscript": RunDir.torchscript.name, "onnx": RunDir.onnx.name}  # RunDir owns run-file names
TOLERANCE = 1e-4
ONNX_OPSET = 18
MIL_WINDOWS = 3  # windows per bag in the example a MIL model is traced with (any number runs after export)


class ExportMismatchError(RuntimeError):
    """The exported model's outputs differ from the eager model's by more than the tolerance."""


@dataclass
class ExportResult:
    """Where the model and its preprocessing were written, and how closely the export matches eager PyTorch."""

    model_path: Path
    preprocessing_path: Path
    max_abs_diff: float
    format: str


def default_output(model_path: str | Path, fmt: str) -> Path:
    """``RUN/model.torchscript.pt`` / ``RUN/model.onnx`` (beside the checkpoint when given a file)."""
    path = Path(model_path)
    return (path if path.is_dir() else path.parent) / DEFAULT_NAMES[fmt]


def preprocessing_path(model_file: str | Path) -> Path:
    """``model.onnx`` -> ``model.preprocessing.json`` (beside it)."""
    path = Path(model_file)
    stem = path.name.split(".")[0] or path.stem
    return path.with_name(f"{stem}.preprocessing.json")


def export_model(
    model_path: str | Path,
    fmt: str = "torchscript",
    out: str | Path | None = None,
    tolerance: float = TOLERANCE,
    batch_size: int = 2,
    overwrite: bool = False,
) -> ExportResult:
    """Export the best checkpoint of a run (or a checkpoint file) and check it against the eager model.

    Raises:
        UserError: unknown format, a cross-validation directory (export one fold), ONNX extras missing.
        ExportMismatchError: max |exported - eager| > ``tolerance`` (the file is removed).
        UserError: ``out`` or its preprocessing JSON exists and medconvnext did not write it (unless ``overwrite``).
    """
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"--format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}")
    if fmt == "onnx":
        _require_onnx()
    folds = fold_checkpoints(model_path) or glob_fold_checkpoints(model_path)
    if folds:
        raise UserError(f"{model_path} is a cross-validation run with {len(folds)} folds (each with its own "
                        f"preprocessing); export one fold, e.g. {folds[0].parent}")
    checkpoint_path = find_checkpoint(model_path)
    out_path = Path(out) if out is not None else default_output(model_path, fmt)
    for target in (out_path, preprocessing_path(out_path)):  # before any work: never replace a user's file
        check_output(target, overwrite, "--out")
    checkpoint = load_checkpoint(checkpoint_path)
    model = checkpoint.build_model().float().cpu().eval()
    pre = PreprocessingPlan.from_dict(checkpoint.meta["preprocessing"])
    generator = torch.Generator().manual_seed(0)
    mil = _is_mil(checkpoint.meta)
    # a MIL model takes (N, M, C, D, H, W): N volumes, each the M windows it pools (traced with M = MIL_WINDOWS)
    leading = (batch_size, MIL_WINDOWS) if mil else (batch_size,)
    example = torch.randn(*leading, pre.in_channels, *pre.input_size, generator=generator)
    with torch.no_grad():
        expected = model(example)
    if fmt == "torchscript":
        atomic_write(out_path, lambda tmp: _save_torchscript(model, example, tmp))
        actual = _run_torchscript(out_path, example)
    else:
        atomic_write(out_path, lambda tmp: _save_onnx(model, example, tmp, instances=mil))
        actual = _run_onnx(out_path, example)
    diff = float(np.abs(actual - expected.numpy()).max())
    if not diff <= tolerance:
        remove(out_path)
        raise ExportMismatchError(f"{fmt} export of {checkpoint_path} differs from the eager model by {diff:.3g} "
                                  f"(> {tolerance:g}); nothing was kept")
    json_path = preprocessing_path(out_path)
    info = export_info(checkpoint.meta, pre, fmt, out_path, checkpoint_path, diff, tolerance)
    atomic_write(json_path, lambda tmp: tmp.write_text(json.dumps(info, indent=2), encoding="utf-8"))
    return ExportResult(out_path, json_path, diff, fmt)


def export_info(meta: dict, pre: PreprocessingPlan, fmt: str, out_path: Path, checkpoint_path: Path, diff: float,
                tolerance: float) -> dict:
    """What a deployment needs to reproduce the input tensor and read the output (the JSON beside the model)."""
    return {
        "format": fmt,
        "model_file": out_path.name,
        "source_checkpoint": str(checkpoint_path),
        "model": meta.get("model"),
        "classes": list(meta["class_names"]),
        "input": _input_description(meta, pre, fmt),
        "output": {"name": "logits", "shape": ["N", len(meta["class_names"])],
                   "meaning": "logits; softmax over axis 1 gives the probabilities of 'classes' in order"},
        "preprocessing": {
            **pre.to_dict(),
            "steps": PreprocessingPipeline(pre).describe(),
        },
        "check": {"max_abs_diff_vs_eager": diff, "tolerance": tolerance},
        **_mil_note(meta),
    }


def _is_mil(meta: dict) -> bool:
    """The checkpoint holds a multiple-instance model (``train.patches=mil``)."""
    model = meta.get("model")
    return isinstance(model, dict) and "mil" in model


def _input_description(meta: dict, pre: PreprocessingPlan, fmt: str) -> dict:
    """The input tensor: (N, C, D, H, W) volumes, or for a MIL model (N, M, C, D, H, W) bags of M windows."""
    mil = _is_mil(meta)
    leading = ["N", "M"] if mil else ["N"]
    return {
        "name": "image",
        "shape": [*leading, pre.in_channels, *pre.input_size],
        "axes": f"{', '.join(leading)}, C, D, H, W: D, H, W are the scan's x, y, z voxel axes after reorientation",
        "dtype": "float32",
        "dynamic_axes": (leading if fmt == "onnx" else []),
    }


def _mil_note(meta: dict) -> dict:
    """How a multiple-instance model's input is made (said in the JSON: a deployment must tile as predict does)."""
    if not _is_mil(meta):
        return {}
    inference = meta.get("inference") or {}
    return {"mil": "M: every sliding window of one preprocessed volume (the uncropped variant: no final pad/crop), "
                   f"windows of the input size with overlap {inference.get('overlap', 0.25)} "
                   "(medconvnext.data.windows.window_starts: starts spread evenly from 0 to size - window; "
                   "a volume smaller than a window is zero-padded symmetrically). The model embeds each window and "
                   "pools them with gated attention into the volume's logits; the attention weights are not an "
                   "output (medconvnext predict --window-map writes them)."}


def _save_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        # the models' input-size checks are Python conditions: traced once, as they should be
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # torch >= 2.10 deprecates TorchScript in favour of torch.export; it still loads in C++ (libtorch) and Python
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(path))


def _run_torchscript(path: Path, example: torch.Tensor) -> np.ndarray:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = torch.jit.load(str(path), map_location="cpu")
        return loaded(example).numpy()


def _require_onnx() -> None:
    import importlib.util

    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"--format onnx needs {', '.join(missing)}: pip install medconvnext[onnx]")


def _save_onnx(model: nn.Module, example: torch.Tensor, path: Path, instances: bool = False) -> None:
    import logging

    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping torchvision::nms" etc.
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model, (example,), input_names=["image"], output_names=["logits"], opset_version=ONNX_OPSET,
                dynamic_shapes=({0: torch.export.Dim("batch", min=1),
                                 **({1: torch.export.Dim("windows", min=1)} if instances else {})},),
                dynamo=True, verbose=False,
            )
    finally:
        onnx_logger.setLevel(level)
    program.save(str(path))


def _run_onnx(path: Path, example: torch.Tensor) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # a batch of another size than the traced one: the batch axis must be dynamic
    first = session.run(["logits"], {"image": example[:1].numpy()})[0]
    rest = session.run(["logits"], {"image": example[1:].numpy()})[0] if len(example) > 1 else first[:0]
    return np.concatenate([first, rest])
