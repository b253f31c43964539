"""Temperature scaling of a classifier's probabilities, and the rule that decides whether a fitted one is applied.

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017): one scalar T > 0 divides
the logits, ``softmax(z / T)``, chosen to minimise the negative log-likelihood of the held-out labels. It never
changes the argmax. The run stores probabilities, so the logits are taken as ``log p``; softmax is invariant to
adding a constant to a row's logits, so ``softmax(log p / T)`` is exactly temperature scaling. Fitted as in the
paper's reference code: LBFGS on the NLL, here over ``log T`` so T stays positive. What is stored and served
(``calibration.json``, the operating point) is :mod:`medconvnext.results.calibration`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["EPS", "MIN_CASES_PER_CLASS", "T_MAX", "T_MIN", "TemperatureChoice", "apply_temperature",
           "choose_temperature", "fit_temperature", "nll"]

EPS = 1e-12


def _log_probs(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), EPS, 1.0))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """(N, K) probabilities -> ``softmax(log(probs) / temperature)``, (N, K) float64; T = 1 returns the input."""
    z = _log_probs(probs) / float(temperature)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(probs: np.ndarray, y_true: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (nats) of ``y_true`` under the temperature-scaled probabilities."""
    p = apply_temperature(probs, temperature)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y_true)), np.asarray(y_true)], EPS, 1.0))))


T_MIN, T_MAX = 0.05, 20.0  # the bounds of a fitted temperature


def fit_temperature(probs: np.ndarray, y_true: np.ndarray, max_iter: int = 100) -> float:
    """The temperature T minimising the NLL of ``y_true`` under ``softmax(log(probs) / T)``.

    Args:
        probs: (N, K) held-out probabilities (rows sum to 1).
        y_true: (N,) class indices.

    Returns:
        T > 0 (T > 1 softens over-confident predictions, T < 1 sharpens under-confident ones).

    Raises:
        ValueError: fewer than 2 cases, or a single class present (nothing to calibrate against).
    """
    import torch

    y = np.asarray(y_true, dtype=np.int64)
    if y.size < 2 or np.unique(y).size < 2:
        raise ValueError("temperature scaling needs at least 2 cases of at least 2 classes")
    logits = torch.as_tensor(_log_probs(probs))
    labels = torch.as_tensor(y)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")
    loss_fn = torch.nn.CrossEntropyLoss()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    # bounded: separable data drive T towards 0 (the NLL keeps falling); 0.05-20 covers any sensible model. LBFGS
    # stops early on such a flat slope (e.g. at 0.15), so the bounds are compared too: the NLL is convex in 1/T,
    # so the best of the three is the minimum over [T_MIN, T_MAX]
    fitted = float(np.clip(log_t.exp().item(), T_MIN, T_MAX))
    return min((fitted, T_MIN, T_MAX), key=lambda t: nll(probs, y, t))


# When a temperature is used (the rule ``report`` applies to a run's held-out predictions):
# 1. fitted only with at least MIN_CASES_PER_CLASS held-out cases of every class: below that the NLL's minimum is set
#    by the one or two most confident mistakes (or by none: T runs to a bound on a set it separates);
# 2. not applied when the fit stops at a bound (T_MIN: the set is separated, the NLL has no interior minimum and T
#    would push every probability to 0 or 1; T_MAX: the predictions carry no signal);
# 3. applied only when it improves a held-out estimate: the NLL of each of CV_FOLDS stratified folds under the
#    temperature fitted on the other folds, against the same folds at T = 1.
MIN_CASES_PER_CLASS = 20
CV_FOLDS = 5


@dataclass
class TemperatureChoice:
    """The temperature to use (1 when not applied), the fit on all cases (None when not fitted), and why."""

    temperature: float
    fitted: float | None
    applied: bool
    reason: str  # one line, e.g. "not fitted: 5 held-out case(s) of class 'solid' (at least 20 of every class needed)"
    cv_nll: tuple[float, float] | None = None  # (at T = 1, with the temperature fitted on the other folds)


def choose_temperature(probs: np.ndarray, y_true: np.ndarray, class_names: list[str] | None = None,
                       seed: int = 0) -> TemperatureChoice:
    """Temperature scaling when it earns its place (the rule above), else T = 1 and the reason."""
    y = np.asarray(y_true, dtype=np.int64)
    k = np.asarray(probs).shape[1]
    counts = np.bincount(y, minlength=k)
    rarest = int(np.argmin(counts))
    if counts[rarest] < MIN_CASES_PER_CLASS:
        name = class_names[rarest] if class_names else str(rarest)
        return TemperatureChoice(1.0, None, False, f"not fitted: {counts[rarest]} held-out case(s) of class {name!r} "
                                 f"({len(y)} in all); a temperature is estimated only with at least "
                                 f"{MIN_CASES_PER_CLASS} cases of every class")
    fitted = fit_temperature(probs, y)
    for bound, why in ((T_MIN, "the predictions separate these cases, so the NLL keeps falling as T shrinks and "
                        "would push every probability to 0 or 1"),
                       (T_MAX, "the predictions barely separate the classes")):
        if math.isclose(fitted, bound, rel_tol=1e-6):
            return TemperatureChoice(1.0, fitted, False, f"not applied: the fitted temperature reached its bound "
                                     f"({bound:g}): {why}")
    raw, scaled = _cross_validated_nll(probs, y, seed)
    if not scaled < raw:
        return TemperatureChoice(1.0, fitted, False, f"not applied: T = {fitted:.3f} does not improve the "
                                 f"cross-validated NLL ({raw:.3f} at T = 1, {scaled:.3f} fitted, {CV_FOLDS} folds)",
                                 (raw, scaled))
    return TemperatureChoice(fitted, fitted, True, f"applied: cross-validated NLL {raw:.3f} -> {scaled:.3f} "
                             f"({CV_FOLDS} folds)", (raw, scaled))


def _cross_validated_nll(probs: np.ndarray, y: np.ndarray, seed: int) -> tuple[float, float]:
    """Mean NLL over stratified folds: (at T = 1, under the temperature fitted on the other folds)."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=np.int64)
    for c in np.unique(y):  # stratified: each class dealt round-robin over the folds, in a seeded order
        where = rng.permutation(np.flatnonzero(y == c))
        fold[where] = np.arange(len(where)) % CV_FOLDS
    raw = scaled = 0.0
    for f in range(CV_FOLDS):
        test = fold == f
        t = fit_temperature(probs[~test], y[~test])
        raw += nll(probs[test], y[test]) * test.sum()
        scaled += nll(probs[test], y[test], t) * test.sum()
    return raw / len(y), scaled / len(y)
