"""The one predict gate of ``predict``, ``evaluate`` and cross-validation's test ensemble.

:func:`predict_cases` runs, in this order and nowhere else: validate the scans (the validator of ``data check``),
audit them against the cases the runs trained on (leakage), load the models, let the caller check them, predict,
and refuse probabilities that are not finite. Each step guards the next: a NaN scan never reaches a model, a leaking
case is refused before a model is loaded, and a diverged model's NaN never reaches a prediction table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from medconvnext.data.datalist import Case
from medconvnext.data.leakage import LeakageReport, audit_run, enforce
from medconvnext.data.validate import HasImages, require_valid
from medconvnext.engine.inference import EnsemblePrediction, FoldEnsemble
from medconvnext.results.table import require_finite
from medconvnext.rundir import RunDir

__all__ = ["GatedPredictions", "audit_models", "predict_cases"]

T = TypeVar("T")


@dataclass
class GatedPredictions(Generic[T]):
    """What passed the gate: the models, one prediction per case (finite), the leakage findings, and what the
    caller's ``check`` returned."""

    ensemble: FoldEnsemble
    results: list[EnsemblePrediction]
    leakage: LeakageReport = field(default_factory=LeakageReport)
    checked: T | None = None

    @property
    def probs(self) -> np.ndarray:
        """Mean probabilities of the members, (N, K)."""
        if not self.results:
            return np.empty((0, len(self.ensemble.class_names)))
        return np.stack([r.probabilities for r in self.results])


def audit_models(models: Sequence[Path], cases: Sequence[HasImages], eval_side: str) -> LeakageReport:
    """The cases against the training cases of every model that is a run (it has ``splits.json``; a checkpoint
    alone does not say what it was trained on). With several models, each finding names its run.

    Raises:
        UserError: a run whose training cases cannot be read (:func:`~medconvnext.data.leakage.training_cases`).
    """
    # a datalist case keeps its subject (the audit groups by it); a scan given to predict is its first image
    items = [case if isinstance(case, Case) else case.images[0] for case in cases]
    report = LeakageReport()
    for path in models:
        if not RunDir(path).splits.is_file():
            continue
        found = audit_run(path, items, eval_side=eval_side)
        if len(models) > 1:  # name the run each training case belongs to
            found.findings = [replace(f, run=path.name) for f in found.findings]
        report = report.merge(found)
    return report


def predict_cases(
    cases: Sequence[HasImages],
    models: Sequence[str | Path],
    *,
    device: str = "auto",
    tta: bool = False,
    inference: dict[str, Any] | None = None,
    leakage: str = "warn",
    leakage_hint: str = "--strict",
    eval_side: str = "evaluated",
    check: Callable[[FoldEnsemble], T] | None = None,
) -> GatedPredictions[T]:
    """Predict ``cases`` with the ensemble of every model of ``models`` (runs, cv runs or checkpoints).

    Args:
        cases: datalist cases or scans given to predict; each names its image(s) (several = channels).
        models: run directories or checkpoints, ensembled (mean probability).
        inference: ``inference.*`` options replacing the runs' own where not None (e.g. ``mode="sliding"``).
        leakage: ``warn``, ``error`` (refuse, naming ``leakage_hint``) or ``off`` (the caller audited already, as
            a cross-validation does for its own splits before training).
        eval_side: what the cases are, in the leakage message (``test``, ``predicted``...).
        check: called with the loaded models before any prediction (e.g. a class name or a calibration the caller
            needs); what it returns is ``GatedPredictions.checked``.

    Raises:
        UserError: a bad scan (before any model is loaded), a leaking case with ``leakage="error"``, a model that
            cannot be loaded, whatever ``check`` refuses, or probabilities that are not finite (a model whose
            training diverged; the first such scan named, nothing returned for the caller to write).
    """
    models = [Path(m) for m in models]
    require_valid(cases)  # a NaN or blank scan is refused, not predicted
    report = audit_models(models, cases, eval_side) if leakage != "off" else LeakageReport()
    enforce(report, leakage, leakage_hint)
    ensemble = FoldEnsemble.load_many(models, device=device, tta=tta)
    ensemble.set_inference(**(inference or {}))  # also checks the runs' own inference settings
    checked = check(ensemble) if check is not None else None
    results = [ensemble.predict_case(case.images) for case in cases]
    gated = GatedPredictions(ensemble, results, report, checked)
    require_finite([case.images[0] for case in cases], gated.probs)
    return gated
