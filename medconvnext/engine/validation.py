"""Evaluation of a model on labelled batches: the validation of every epoch, ``validate_run`` and the recipe search.

One path from a loader to metrics: :func:`predict_loader` (logits, labels, case ids; whole volumes or sliding
windows) -> :func:`validate_loader` (gathered over DDP ranks: loss, probabilities, metrics). The epoch's validation in
``train``, :func:`validate_run` (a run's checkpoint on its validation cases, in one process) and
``bench/recipe_search.py`` all go through it. Which epoch is best (:func:`is_better`) is decided here too.

After the last epoch, :func:`write_val_predictions_tta` predicts the validation cases once more with the best
checkpoint and test-time augmentation, through ``predict --tta``'s own path (:class:`~medconvnext.engine.inference.
Predictor`), so the operating point used with ``--tta`` can be fitted on the probabilities it is applied to.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from medconvnext.config import InferenceConfig, load_config
from medconvnext.data.datalist import Case, load_datalist
from medconvnext.data.dataset import case_records, make_dataset
from medconvnext.data.pipeline import PreprocessingPipeline
from medconvnext.data.preprocessing import PreprocessingPlan
from medconvnext.engine import distributed as dist
from medconvnext.engine.checkpoint import load_checkpoint
from medconvnext.engine.devices import as_model_input, autocast, resolve_device
from medconvnext.engine.feeding import loader_options
from medconvnext.engine.inference import Predictor, infer_volume
from medconvnext.models import apply_memory_format, model_memory_format
from medconvnext.results.metrics import classification_metrics
from medconvnext.results.table import write_prediction_table
from medconvnext.rundir import RunDir

__all__ = ["Tiling", "validate_loader", "validate_run", "is_better", "predict_cases_tta", "predict_loader",
           "warn_undefined_auc", "write_val_predictions", "write_val_predictions_tta"]

# (inference settings, training input size): evaluate uncropped volumes with sliding windows; None = whole volumes
Tiling = tuple[InferenceConfig, Sequence[int]]


@torch.no_grad()
def predict_loader(
    model: nn.Module,
    loader: Iterable[dict[str, Any]],
    device: torch.device,
    amp: bool,
    tiling: Tiling | None = None,
) -> dict[str, Any]:
    """Logits of every case in ``loader``, with labels and case ids.

    ``loader`` yields dicts with ``image`` (N, C, D, H, W), ``label`` (N,) integer classes and ``case_id`` (N
    names). Returns ``logits`` (N_total, K) float32 on the CPU, ``labels`` (N_total,) and ``case_ids``; a rank that
    got no case returns empty tensors. ``tiling = (inference settings, input size)`` runs each (uncropped,
    batch-of-one) volume through :func:`medconvnext.engine.inference.infer_volume`; the "logits" are then
    log-probabilities.
    """
    model.eval()
    logits, labels, ids = [], [], []
    for batch in loader:
        if tiling is not None:
            settings, input_size = tiling
            probs = infer_volume(model, batch["image"][0], settings, input_size, device, amp).probabilities
            out = torch.log(torch.as_tensor(probs).clamp_min(1e-12))[None]
        else:
            with autocast(device, amp):
                out = model(as_model_input(batch["image"], device, model_memory_format(model)))
        logits.append(out.float().cpu())
        labels.append(batch["label"])
        ids.extend(batch["case_id"])
    if not logits:  # a rank with no validation case under DDP
        return {"logits": torch.zeros(0, 0), "labels": torch.zeros(0, dtype=torch.long), "case_ids": []}
    return {"logits": torch.cat(logits), "labels": torch.cat(labels), "case_ids": ids}


def validate_loader(
    model: nn.Module,
    loader: Iterable[dict[str, Any]],
    device: torch.device,
    amp: bool,
    class_names: Sequence[str],
    loss_fn: nn.Module,
    tiling: Tiling | None = None,
) -> dict[str, Any]:
    """Loss, probabilities and metrics over a labelled loader (all ranks' cases under DDP).

    Returns :func:`predict_loader`'s keys plus ``loss`` (``loss_fn`` of the gathered logits), ``probs``
    (N, K softmax) and ``metrics`` (:func:`~medconvnext.results.metrics.classification_metrics`).
    """
    out = _gather_predictions(predict_loader(model, loader, device, amp, tiling))
    probs = torch.softmax(out["logits"], dim=1)
    loss = float(loss_fn(out["logits"], out["labels"].to(out["logits"].device)))
    metrics = classification_metrics(out["labels"].numpy(), probs.numpy(), list(class_names))
    return {"loss": loss, "metrics": metrics, "probs": probs, **out}


def _gather_predictions(out: dict[str, Any]) -> dict[str, Any]:
    """Every rank's share of the validation cases, concatenated (each case exactly once)."""
    if not dist.is_distributed():
        return out
    parts = dist.all_gather_objects(out)
    return {
        "logits": torch.cat([p["logits"] for p in parts]),
        "labels": torch.cat([p["labels"] for p in parts]),
        "case_ids": [i for p in parts for i in p["case_ids"]],
    }


def is_better(record: dict[str, Any], best: dict[str, Any]) -> bool:
    """Higher validation AUC wins; lower validation loss breaks ties and stands in when AUC is undefined."""
    auc, best_auc = record["val_auc"], best["val_auc"]
    if auc is not None and best_auc is not None and auc != best_auc:
        return auc > best_auc
    if auc is not None and best_auc is None:
        return True
    if auc is None and best_auc is not None:
        return False
    return record["val_loss"] < best["val_loss"]


def warn_undefined_auc(val_cases: list, select: str) -> None:
    """Say once, before the first epoch, why the validation AUC will read n/a: it needs two classes."""
    labels = sorted({c.label for c in val_cases if c.label is not None})
    if len(labels) >= 2 or not val_cases:
        return
    present = f"only class {labels[0]!r}" if labels else "no labelled case"
    chosen = "the last epoch is kept" if select == "last" else "the best checkpoint is chosen by validation loss"
    warnings.warn(f"the validation set holds {present} ({len(val_cases)} case(s)): the validation AUC is undefined "
                  f"(n/a) and {chosen}; put cases of every class in val", stacklevel=2)


def write_val_predictions(path: Path, val: dict[str, Any], class_names: Sequence[str]) -> None:
    """The prediction table of :func:`validate_loader`'s output (case id, label, prediction, a probability per
    class)."""
    labels = [class_names[i] for i in val["labels"].tolist()]
    write_prediction_table(path, val["case_ids"], val["probs"].numpy(), class_names, labels=labels)


def predict_cases_tta(checkpoint: Path, cases: Sequence[Case], device: torch.device) -> np.ndarray:
    """(N, K) probabilities of ``cases`` by ``checkpoint`` with test-time augmentation, exactly as
    ``predict --tta`` computes them (the checkpoint's preprocessing and inference settings, the mean over the 8
    flips). Under DDP each rank predicts every world_size-th case and every rank gets all of them."""
    predictor = Predictor.load(checkpoint, device=str(device), tta=True)
    mine = {i: predictor.predict_case(list(cases[i].images)).probabilities
            for i in range(dist.rank(), len(cases), dist.world_size())}
    merged: dict[int, np.ndarray] = {}
    for part in dist.all_gather_objects(mine):
        merged.update(part)
    return np.stack([merged[i] for i in range(len(cases))])


def write_val_predictions_tta(run: RunDir, cases: Sequence[Case], class_names: Sequence[str],
                              device: torch.device) -> Path:
    """Write ``val_predictions_tta.csv``: the validation ``cases`` predicted by the run's best checkpoint with TTA,
    in the layout of ``val_predictions.csv`` (case id, label, prediction, probabilities). Costs one 8x pass over
    the validation set. Only rank 0 writes (atomically); every rank takes part in the prediction."""
    probs = predict_cases_tta(run.checkpoint("best"), cases, device)
    if dist.is_main():
        write_prediction_table(run.val_predictions_tta, [c.case_id for c in cases], probs, class_names,
                               labels=[c.label or "" for c in cases])
    dist.barrier()
    return run.val_predictions_tta


def validate_run(run_dir: str | Path, which: str = "last", device: str = "cpu") -> dict[str, Any]:
    """Evaluate ``checkpoint_<which>`` of a run on its validation cases, in this one process.

    Uses the run's config.yaml (inference settings included), splits.json and preprocessing, so the result
    is comparable to the validation metrics the run logged (e.g. to check a DDP run). Returns
    :func:`validate_loader`'s dict.
    """
    run = RunDir(Path(run_dir))
    config = load_config(run.config)
    plan = PreprocessingPlan.from_dict(json.loads(run.dataset.read_text(encoding="utf-8"))["preprocessing"])
    splits = json.loads(run.splits.read_text(encoding="utf-8"))
    datalist = load_datalist(config.data.path)
    by_id = {c.case_id: c for c in datalist.cases}
    records = case_records(datalist, [by_id[i] for i in splits["val"]])
    tiled = config.inference.mode != "whole" or config.train.patches == "mil"  # MIL pools every window
    transform = PreprocessingPipeline(plan).deterministic("uncropped" if tiled else "cropped")
    torch_device = resolve_device(device)
    loader = DataLoader(make_dataset(records, transform, "none"), batch_size=1 if tiled else config.train.batch_size,
                        **loader_options(config.data, torch_device))
    checkpoint = load_checkpoint(run.checkpoint(which))
    model = checkpoint.build_model().to(torch_device)
    apply_memory_format(model, torch_device, plan.input_size)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.train.label_smoothing)
    tiling = (config.inference, plan.input_size) if tiled else None
    return validate_loader(model, loader, torch_device, config.train.amp, class_names=datalist.classes, loss_fn=loss_fn,
                    tiling=tiling)
