"""Temperature scaling and the operating point against hand computations on fixed small tables."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from medconvnext.errors import UserError
from medconvnext.reports.operating import calibration_summary, fit_run_calibration
from medconvnext.results.calibration import (
    Calibration,
    apply_temperature,
    choose_threshold,
    fit_temperature,
    load_calibration,
    nll,
    save_calibration,
    sensitivity_specificity,
)
from medconvnext.results.table import Predictions

# positives score 0.9 0.8 0.6 0.4, negatives 0.7 0.5 0.3 0.2 0.1 (call positive when score >= threshold)
SCORES = np.array([0.9, 0.8, 0.6, 0.4, 0.7, 0.5, 0.3, 0.2, 0.1])
POSITIVE = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0], dtype=bool)


def test_youden_threshold_by_hand():
    # threshold: sens, spec, J = 0.9: .25 1 .25 | 0.8: .5 1 .5 | 0.7: .5 .8 .3 | 0.6: .75 .8 .55 | 0.5: .75 .6 .35
    #            0.4: 1 .6 .6 (max) | 0.3: 1 .4 .4 | ...; placed halfway down to the next score: 0.35
    point = choose_threshold(POSITIVE, SCORES)
    assert point.criterion == "youden"
    assert point.threshold == pytest.approx(0.35)
    assert (point.sensitivity, point.specificity) == pytest.approx((1.0, 0.6))


@pytest.mark.parametrize("target, threshold, sens, spec", [
    (0.7, 0.55, 0.75, 0.8),   # highest score with sensitivity >= 0.7 (0.6), halfway down to the next (0.5)
    (0.5, 0.75, 0.5, 1.0),
    (1.0, 0.35, 1.0, 0.6),
    (0.0, 0.85, 0.25, 1.0),
])
def test_target_sensitivity_threshold_by_hand(target, threshold, sens, spec):
    point = choose_threshold(POSITIVE, SCORES, target)
    assert point.threshold == pytest.approx(threshold)
    assert (point.sensitivity, point.specificity) == pytest.approx((sens, spec))
    assert sensitivity_specificity(POSITIVE, SCORES, point.threshold) == pytest.approx((sens, spec))


def test_a_score_on_the_threshold_stays_on_its_side_when_recomputed():
    """The case that sets the operating point must get the same call from a probability a little off its stored,
    6-decimal value (predict recomputes it at full precision)."""
    point = choose_threshold(POSITIVE, SCORES)
    for drift in (-1e-6, 1e-6):
        assert sensitivity_specificity(POSITIVE, SCORES + drift, point.threshold) == pytest.approx((1.0, 0.6))
    # the lowest score (every case called positive) is placed halfway down to 0
    assert choose_threshold(np.array([0, 1], bool), np.array([0.2, 0.1]), 1.0).threshold == pytest.approx(0.05)


def test_operating_point_needs_both_classes():
    with pytest.raises(ValueError, match="positive and negative"):
        choose_threshold(np.ones(3, dtype=bool), np.array([0.1, 0.2, 0.3]))


def test_apply_temperature_by_hand():
    # softmax(log p / 2) = sqrt(p) / sum(sqrt(p)): [0.2, 0.8] -> [sqrt(.2), sqrt(.8)] / (3 sqrt(.2)) = [1/3, 2/3]
    out = apply_temperature(np.array([[0.2, 0.8]]), 2.0)
    assert out == pytest.approx(np.array([[1 / 3, 2 / 3]]))
    assert apply_temperature(np.array([[0.2, 0.8]]), 1.0) == pytest.approx(np.array([[0.2, 0.8]]))


def test_fitted_temperature_matches_the_closed_form():
    # every case has logit margin m = 2 for class 1 (p1 = sigmoid(2)); 3 of 4 are class 1. The NLL
    # a log(1 + e^{-m/T}) + (1 - a) log(1 + e^{m/T}) is minimal where sigmoid(m/T) = a: T = m / logit(a) = 2 / ln 3
    p1 = 1 / (1 + math.exp(-2))
    probs = np.array([[1 - p1, p1]] * 4)
    y = np.array([1, 1, 1, 0])
    t = fit_temperature(probs, y)
    assert t == pytest.approx(2 / math.log(3), rel=1e-4)
    assert apply_temperature(probs, t)[:, 1] == pytest.approx(np.full(4, 0.75), rel=1e-4)


def test_fitted_temperature_minimises_the_nll_on_a_grid():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (40, 3))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.where(rng.random(40) < 0.6, probs.argmax(axis=1), rng.integers(0, 3, 40))  # over-confident
    t = fit_temperature(probs, y)
    grid = np.linspace(0.2, 10, 4901)
    best = grid[np.argmin([nll(probs, y, g) for g in grid])]
    assert t == pytest.approx(best, abs=0.005)
    assert t > 1  # over-confident predictions are softened
    assert nll(probs, y, t) <= nll(probs, y, 1.0)
    assert (apply_temperature(probs, t).argmax(axis=1) == probs.argmax(axis=1)).all()  # argmax unchanged


def test_run_calibration_and_its_summary(tmp_path):
    p1 = 1 / (1 + math.exp(-2))
    probs = np.array(([[1 - p1, p1]] * 4 + [[p1, 1 - p1]] * 4) * 6)  # 24 cases of each class: enough to fit
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1] * 6)
    preds = Predictions([f"c{i}" for i in range(48)], y, probs, np.zeros(48, dtype=np.int64), ["neg", "pos"])
    calibration = fit_run_calibration(preds, "out-of-fold predictions")
    assert calibration.temperature == pytest.approx(2 / math.log(3), rel=1e-4)  # the same margin, 6 of 8 right
    assert calibration.temperature_applied and calibration.temperature_note.startswith("applied: cross-validated")
    assert calibration.positive_class == "pos" and calibration.criterion == "youden"
    # halfway between the two calibrated scores (0.75 and 0.25): the upper one called positive
    assert calibration.threshold == pytest.approx(0.5, rel=1e-4)
    assert (calibration.sensitivity, calibration.specificity) == pytest.approx((0.75, 0.75))
    summary = calibration_summary(preds, calibration, "test", n_boot=200, seed=0)
    op = summary["operating_point"]
    assert (op["tp"], op["fn"], op["tn"], op["fp"]) == (18, 6, 18, 6)
    low, high = op["ci"]["sensitivity"]
    assert 0 <= low <= 0.75 <= high <= 1
    assert summary["ece_after"] < summary["ece_before"]
    path = save_calibration(tmp_path / "calibration.json", calibration)
    assert load_calibration(path) == calibration
    with pytest.raises(UserError, match="no calibration"):
        load_calibration(tmp_path / "missing.json")
    assert isinstance(calibration, Calibration)


def test_the_tta_section_round_trips_and_old_files_load_without_it(tmp_path):
    """calibration.json's optional ``tta`` section: saved and loaded nested, served as a calibration of its own (the
    run's classes and models); a file written before it existed loads with ``tta`` None."""
    from dataclasses import asdict

    from medconvnext.results.calibration import TtaCalibration

    plain = Calibration(1.3, ["neg", "pos"], "validation predictions (8 cases)", "pos", 0.41, "youden", 0.75, 0.75,
                        {"checkpoint_best.safetensors": "abc"})
    values = asdict(plain)
    del values["tta"]  # as written before the section existed
    old = tmp_path / "old.json"
    old.write_text(json.dumps(values), encoding="utf-8")
    assert load_calibration(old) == plain and plain.for_tta() is None
    plain.tta = TtaCalibration(0.8, "validation predictions with TTA (8 cases)", 0.47, "youden", 1.0, 0.5)
    path = save_calibration(tmp_path / "calibration.json", plain)
    assert json.loads(path.read_text(encoding="utf-8"))["tta"]["threshold"] == 0.47
    loaded = load_calibration(path)
    assert loaded == plain
    served = loaded.for_tta()
    assert (served.temperature, served.threshold, served.fitted_on) == (0.8, 0.47, plain.tta.fitted_on)
    assert (served.class_names, served.positive_class, served.models) == (plain.class_names, "pos", plain.models)
    assert served.raw_threshold() != plain.raw_threshold()  # the TTA temperature moves the TTA threshold
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(asdict(plain) | {"tta": {"temperature": 1.0}}), encoding="utf-8")
    with pytest.raises(UserError, match="not a medconvnext calibration file"):
        load_calibration(bad)


def test_a_temperature_at_either_bound_is_not_applied_and_says_why():
    """Confident predictions that do not separate the classes drive T to its upper bound (every probability near
    1/K); separated ones drive it to the lower bound (every probability 0 or 1). Neither is applied: T stays 1."""
    probs = np.array([[0.95, 0.05], [0.05, 0.95]] * 24)
    y = np.array([0, 1, 1, 0] * 12)  # half of the confident predictions right, half wrong: AUC 0.5
    preds = Predictions([f"c{i}" for i in range(48)], y, probs, np.zeros(48, dtype=np.int64), ["neg", "pos"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, in the calibration's note, not as a warning
        calibration = fit_run_calibration(preds, "validation predictions")
    assert (calibration.temperature, calibration.fitted_temperature) == (1.0, 20.0)
    assert not calibration.temperature_applied
    assert "not applied: the fitted temperature reached its bound (20)" in calibration.temperature_note
    good = Predictions(preds.images, probs.argmax(1), probs, preds.folds, ["neg", "pos"])
    separated = fit_run_calibration(good, "validation predictions")
    assert (separated.temperature, separated.fitted_temperature) == (1.0, 0.05)
    assert "reached its bound (0.05)" in separated.temperature_note and "0 or 1" in separated.temperature_note
    summary = calibration_summary(good, separated, "test", n_boot=0)
    assert summary["temperature_applied"] is False and summary["nll_after"] == summary["nll_before"]


def test_calibration_on_ten_cases_is_not_fitted_and_says_why():
    """The README's run: 10 validation cases. One temperature fitted on them would be set by one or two cases."""
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 0.95, 10)
    probs = np.stack([1 - p, p], axis=1)
    y = np.array([0, 1] * 5)
    preds = Predictions([f"c{i}" for i in range(10)], y, probs, np.zeros(10, dtype=np.int64), ["cystic", "solid"])
    calibration = fit_run_calibration(preds, "validation predictions")
    assert calibration.temperature == 1.0 and not calibration.temperature_applied
    assert calibration.fitted_temperature is None
    assert calibration.temperature_note == ("not fitted: 5 held-out case(s) of class 'cystic' (10 in all); a "
                                            "temperature is estimated only with at least 20 cases of every class")
    assert calibration.threshold is not None  # the operating point is still chosen, on the raw probabilities


def test_a_temperature_that_does_not_improve_held_out_nll_is_not_applied():
    """Well calibrated predictions: a fit on all cases moves T a little, but on held-out folds it does no better."""
    from medconvnext.results.calibration import choose_temperature

    rng = np.random.default_rng(1)
    p = rng.uniform(0.02, 0.98, 200)
    y = (rng.uniform(size=200) < p).astype(int)  # drawn from the probabilities themselves: calibrated already
    choice = choose_temperature(np.stack([1 - p, p], axis=1), y)
    assert choice.fitted is not None and choice.temperature == 1.0 and not choice.applied
    assert choice.reason.startswith("not applied: T = ") and "does not improve the cross-validated NLL" in choice.reason
    raw, scaled = choice.cv_nll
    assert scaled >= raw
