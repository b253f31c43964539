"""The report's operating-point and calibration sections, and fitting them on a run's held-out predictions.

- :func:`fit_run_calibration`: temperature (and, binary, threshold) from held-out predictions (out-of-fold of a
  cross-validation, or a train run's validation set), as a :class:`~medconvnext.results.calibration.Calibration`.
- :func:`calibration_summary`: what a calibration gives on a set of predictions (ECE/NLL/Brier before and after,
  sensitivity/specificity at the threshold with bootstrap CIs): the ``calibration`` part of the summary JSON.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from medconvnext.results.calibration import (
    Calibration,
    apply_temperature,
    choose_temperature,
    choose_threshold,
    nll,
    sensitivity_specificity,
)
from medconvnext.results.metrics import ci_text, expected_calibration_error
from medconvnext.results.table import Predictions

__all__ = ["calibration_summary", "fit_run_calibration"]


def fit_run_calibration(pooled: Predictions, fitted_on: str, target_sensitivity: float | None = None
                        ) -> Calibration | None:
    """Temperature on ``pooled`` and, for two classes, the threshold on the calibrated positive probability.

    The temperature is used only when it earns its place (:func:`~medconvnext.results.calibration.
    choose_temperature`: enough cases of every class, not at a bound, a better cross-validated NLL); else it is 1
    and ``temperature_note`` says why. Returns None when the predictions cannot be calibrated (a single class,
    fewer than 2 cases).
    """
    if pooled.y_true.size < 2 or np.unique(pooled.y_true).size < 2:
        return None
    names = list(pooled.class_names)
    choice = choose_temperature(pooled.probs, pooled.y_true, names)
    temperature = choice.temperature
    calibration = Calibration(temperature, names, f"{fitted_on} ({len(pooled)} cases)",
                              temperature_applied=choice.applied,
                              fitted_temperature=None if choice.applied else choice.fitted,
                              temperature_note=choice.reason)
    if len(names) == 2:
        calibrated = apply_temperature(pooled.probs, temperature)
        point = choose_threshold(pooled.y_true == 1, calibrated[:, 1], target_sensitivity)
        calibration.positive_class = names[1]
        calibration.threshold, calibration.criterion = point.threshold, point.criterion
        calibration.sensitivity, calibration.specificity = point.sensitivity, point.specificity
    return calibration


def _bootstrap(is_positive: np.ndarray, score: np.ndarray, threshold: float, n_boot: int, seed: int,
               level: float) -> tuple[list, list]:
    """Percentile CIs of sensitivity and specificity at a fixed threshold, resampling cases."""
    if n_boot <= 0:
        return [None, None], [None, None]
    rng = np.random.default_rng(seed)
    sens, spec = [], []
    for _ in range(n_boot):
        idx = rng.integers(0, len(score), len(score))
        a, b = sensitivity_specificity(is_positive[idx], score[idx], threshold)
        if not np.isnan(a):
            sens.append(a)
        if not np.isnan(b):
            spec.append(b)
    q = [(1 - level) / 2, 1 - (1 - level) / 2]
    return ([float(v) for v in np.quantile(sens, q)] if sens else [None, None],
            [float(v) for v in np.quantile(spec, q)] if spec else [None, None])


def _threshold_ci(is_positive: np.ndarray, score: np.ndarray, criterion: str | None, n_boot: int, seed: int,
                  level: float) -> list:
    """Percentile CI of the threshold itself: the same criterion re-applied to each resample of the cases (how far
    the chosen operating point moves with the cases it was chosen on)."""
    if n_boot <= 0 or criterion is None:
        return [None, None]
    target = float(criterion.split(">=")[1]) if criterion.startswith("sensitivity>=") else None
    rng = np.random.default_rng(seed + 1)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(score), len(score))
        if is_positive[idx].all() or not is_positive[idx].any():
            continue
        values.append(choose_threshold(is_positive[idx], score[idx], target).threshold)
    if not values:
        return [None, None]
    q = [(1 - level) / 2, 1 - (1 - level) / 2]
    return [float(v) for v in np.quantile(values, q)]


def calibration_summary(predictions: Predictions, calibration: Calibration, source: str, n_boot: int = 1000,
                        seed: int = 0, level: float = 0.95) -> dict:
    """What ``calibration`` gives on ``predictions`` (JSON-ready).

    Args:
        source: where the calibration came from, for the report (e.g. "fitted on these out-of-fold predictions").

    Returns:
        ``temperature``, ``fitted_on``, ``source``, ``ece_before``/``ece_after`` (15 bins), ``nll_before``/
        ``nll_after`` (nats), and for two classes ``operating_point``: threshold, criterion, positive_class,
        sensitivity, specificity, their CIs, and the confusion counts tp/fn/tn/fp at the threshold.
    """
    y, p = predictions.y_true, predictions.probs
    calibrated = apply_temperature(p, calibration.temperature)
    out: dict = {
        "temperature": calibration.temperature,
        "fitted_on": calibration.fitted_on,
        "source": source,
        "ece_before": expected_calibration_error(y, p),
        "ece_after": expected_calibration_error(y, calibrated),
        "nll_before": nll(p, y),
        "nll_after": nll(calibrated, y),
        "operating_point": None,
        # False: the rule kept T = 1 (the note says why); files written before the rule always applied theirs
        "temperature_applied": calibration.temperature_applied,
        "temperature_note": calibration.temperature_note,
        "fitted_temperature": calibration.fitted_temperature,
    }
    if calibration.threshold is not None and len(predictions.class_names) == 2:
        pos, score = y == 1, calibrated[:, 1]
        sens, spec = sensitivity_specificity(pos, score, calibration.threshold)
        ci_sens, ci_spec = _bootstrap(pos, score, calibration.threshold, n_boot, seed, level)
        ci_threshold = _threshold_ci(pos, score, calibration.criterion, n_boot, seed, level)
        called = score >= calibration.threshold
        out["operating_point"] = {
            "threshold": calibration.threshold,
            "criterion": calibration.criterion,
            "positive_class": calibration.positive_class,
            "sensitivity": None if np.isnan(sens) else sens,
            "specificity": None if np.isnan(spec) else spec,
            "ci": {"sensitivity": ci_sens, "specificity": ci_spec, "threshold": ci_threshold},
            "tp": int((called & pos).sum()), "fn": int((~called & pos).sum()),
            "tn": int((~called & ~pos).sum()), "fp": int((called & ~pos).sum()),
        }
    return out


def criterion_text(criterion: str | None) -> str:
    """``youden`` -> "Youden's J (max sensitivity + specificity - 1)"; ``sensitivity>=0.9`` -> readable text."""
    if criterion == "youden":
        return "Youden's J (max sensitivity + specificity - 1)"
    if criterion and criterion.startswith("sensitivity>="):
        return f"target sensitivity {criterion.split('>=')[1]} (highest threshold reaching it)"
    return str(criterion)


def _applied(cal: Mapping) -> bool:
    """A temperature was fitted and used (not an ensemble's T = 1, nor one the rule kept at 1)."""
    return bool(cal.get("temperature_fitted", True) and cal.get("temperature_applied", True))


def section_rows(cal: Mapping) -> tuple[list[list[str]], list[list[str]]]:
    """(operating-point table rows, calibration table rows) for the report."""

    def f(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    def ci(v: list | None) -> str:
        return ci_text(v)

    op = cal.get("operating_point")
    op_rows = []
    if op:
        op_rows = [
            [f"Threshold ({'calibrated ' if _applied(cal) else ''}P({op['positive_class']}))",
             f(op["threshold"]), ci(op["ci"].get("threshold"))],
            ["Chosen by", criterion_text(op["criterion"]), ""],
            ["Sensitivity", f(op["sensitivity"]), ci(op["ci"]["sensitivity"])],
            ["Specificity", f(op["specificity"]), ci(op["ci"]["specificity"])],
            ["TP / FN / TN / FP", f"{op['tp']} / {op['fn']} / {op['tn']} / {op['fp']}", ""],
        ]
    cal_rows = [
        ["Temperature T", "1 (raw)", f(cal["temperature"])],
        ["ECE (15 bins)", f(cal["ece_before"]), f(cal["ece_after"])],
        ["NLL (nats per case)", f(cal["nll_before"]), f(cal["nll_after"])],
    ]
    return op_rows, cal_rows
