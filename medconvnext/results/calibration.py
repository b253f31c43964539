"""Post-hoc calibration (temperature scaling) and the operating point (decision threshold) of a classifier.

Both are fitted on held-out predictions (the out-of-fold predictions of a cross-validation, or a train run's
validation predictions), stored with the run as ``calibration.json`` and applied by ``predict``.

- Temperature scaling: fitted and chosen in :mod:`medconvnext.results.temperature` (re-exported here).
- Operating point (binary problems): the threshold on the positive-class probability above which (>=) a case
  is called positive, chosen for a target sensitivity (the highest threshold that reaches it, i.e. the best
  specificity at that sensitivity) or, by default, for Youden's J = sensitivity + specificity - 1 (ties: the
  highest threshold).
- The operating point of an ensemble of runs (:func:`ensemble_operating_point`, e.g. one recipe trained with three
  seeds): the threshold on the mean of the runs' held-out predictions, uncalibrated.
- Test-time augmentation (the mean probability over 8 flips) moves the probabilities, so a temperature and a
  threshold fitted on plain predictions do not fit TTA ones. A run that has held-out predictions made with TTA
  (``val_predictions_tta.csv`` / ``oof_predictions_tta.csv``) gets a second fit on them, by the same functions
  and with the same target: the ``tta`` section of ``calibration.json`` (:class:`TtaCalibration`), which
  ``predict --tta`` and ``evaluate --tta`` use (:meth:`Calibration.for_tta`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medconvnext.errors import UserError
from medconvnext.fileio import atomic_write
from medconvnext.results.table import TEST_FOLD, Predictions, read_predictions
from medconvnext.results.temperature import (  # noqa: F401 - re-exported: the calibration's one import
    EPS,
    MIN_CASES_PER_CLASS,
    T_MAX,
    T_MIN,
    TemperatureChoice,
    apply_temperature,
    choose_temperature,
    fit_temperature,
    nll,
)
from medconvnext.rundir import RunDir

__all__ = [
    "T_MAX",
    "T_MIN",
    "TTA_CALIBRATION_HINT",
    "TTA_FITTED_ON",
    "TTA_THRESHOLD_NOTE",
    "Calibration",
    "OperatingPoint",
    "TtaCalibration",
    "MIN_CASES_PER_CLASS",
    "TemperatureChoice",
    "apply_temperature",
    "choose_temperature",
    "choose_threshold",
    "ensemble_operating_point",
    "fit_temperature",
    "load_calibration",
    "save_calibration",
    "sensitivity_specificity",
]

# A run trained before TTA held-out predictions existed has only a threshold chosen without test-time
# augmentation; the flip average moves probabilities (an under-trained model's a long way), so the point it picks
# under TTA must be re-measured, or refitted on TTA predictions (the hint says how).
TTA_THRESHOLD_NOTE = (
    "the operating point's threshold was chosen on validation predictions without test-time augmentation; "
    "TTA changes the probabilities, so the sensitivity and specificity it gives with --tta can differ from the "
    "validation ones, by a lot for a weak model"
)
TTA_CALIBRATION_HINT = (
    "a run trained before held-out predictions with TTA were written has none: `medconvnext train --resume RUN` "
    "writes them for a finished train run (nothing is trained; for a cross-validation, rerun the same `cv` "
    "command), then `medconvnext report RUN` fits the TTA operating point"
)
TTA_FITTED_ON = " with test-time augmentation (8 flips)"  # appended to ``fitted_on`` of a fit on TTA predictions


def sensitivity_specificity(is_positive: np.ndarray, score: np.ndarray, threshold: float) -> tuple[float, float]:
    """(sensitivity, specificity) when ``score >= threshold`` is called positive; NaN where a class is absent."""
    pos = np.asarray(is_positive, dtype=bool)
    called = np.asarray(score) >= threshold
    sens = float(called[pos].mean()) if pos.any() else float("nan")
    spec = float((~called[~pos]).mean()) if (~pos).any() else float("nan")
    return sens, spec


@dataclass
class OperatingPoint:
    """A decision threshold on the positive-class probability and what it gives on the data it was chosen on."""

    threshold: float
    criterion: str  # "youden" or "sensitivity>=0.90"
    sensitivity: float
    specificity: float


def choose_threshold(is_positive: np.ndarray, score: np.ndarray, target_sensitivity: float | None = None
                     ) -> OperatingPoint:
    """Threshold (call positive when ``score >= threshold``), chosen among the observed scores and then placed
    halfway down to the next lower observed score (0 below the lowest): the same cases are called positive, but a
    probability recomputed at another precision (prediction tables keep 6 decimals) or on another machine cannot
    fall on the other side of a threshold that equals it.

    Args:
        is_positive: (N,) bool, the true positive cases.
        score: (N,) positive-class probability.
        target_sensitivity: None -> maximise Youden's J (ties: the highest threshold); a value in [0, 1] -> the
            highest threshold whose sensitivity is >= the target (so the best specificity at that sensitivity).

    Raises:
        ValueError: only one class present, or a target outside [0, 1].
    """
    pos = np.asarray(is_positive, dtype=bool)
    s = np.asarray(score, dtype=np.float64)
    if pos.all() or not pos.any():
        raise ValueError("an operating point needs positive and negative cases")
    candidates = np.unique(s)[::-1]  # highest first: the first maximum is the highest threshold
    sens = np.array([(s[pos] >= t).mean() for t in candidates])
    spec = np.array([(s[~pos] < t).mean() for t in candidates])
    if target_sensitivity is None:
        i = int(np.argmax(sens + spec - 1.0))
        criterion = "youden"
    else:
        if not 0.0 <= target_sensitivity <= 1.0:
            raise ValueError(f"target sensitivity must be in [0, 1], got {target_sensitivity}")
        i = int(np.argmax(sens >= target_sensitivity - 1e-12))  # sensitivity grows as the threshold falls
        criterion = f"sensitivity>={target_sensitivity:g}"
    below = float(candidates[i + 1]) if i + 1 < len(candidates) else 0.0
    return OperatingPoint((float(candidates[i]) + below) / 2, criterion, float(sens[i]), float(spec[i]))


@dataclass
class TtaCalibration:
    """The ``tta`` section of ``calibration.json``: the same fit as the run's, on its held-out predictions made with
    test-time augmentation (for ``predict --tta`` / ``evaluate --tta``)."""

    temperature: float
    fitted_on: str  # e.g. "out-of-fold predictions with test-time augmentation (8 flips) (60 cases)"
    threshold: float | None = None  # on the temperature-scaled positive-class probability
    criterion: str | None = None
    sensitivity: float | None = None
    specificity: float | None = None
    temperature_applied: bool = True
    fitted_temperature: float | None = None
    temperature_note: str | None = None


@dataclass
class Calibration:
    """What ``calibration.json`` holds: the temperature and (binary) the operating point, and where they came from."""

    temperature: float
    class_names: list[str]
    fitted_on: str  # e.g. "out-of-fold predictions (60 cases)"
    positive_class: str | None = None
    threshold: float | None = None  # on the temperature-scaled positive-class probability
    criterion: str | None = None
    sensitivity: float | None = None
    specificity: float | None = None
    # checkpoint file (relative to the run) -> BLAKE2b digest: the models these values were fitted for, so a run
    # retrained in place (``train --overwrite``) cannot be served another model's temperature and threshold
    models: dict[str, str] = field(default_factory=dict)
    # the fit on the TTA held-out predictions; None in files written before them, or when a run has none
    tta: TtaCalibration | None = None
    # whether the rule of choose_temperature let the temperature be used (else ``temperature`` is 1), the one it
    # fitted on every case then, and why it was or was not used; absent from files written before the rule
    temperature_applied: bool = True
    fitted_temperature: float | None = None
    temperature_note: str | None = None

    def for_tta(self) -> Calibration | None:
        """The TTA section as a calibration of its own (this one's classes and models), or None without one."""
        if self.tta is None:
            return None
        section = self.tta
        return Calibration(section.temperature, list(self.class_names), section.fitted_on, self.positive_class,
                           section.threshold, section.criterion, section.sensitivity, section.specificity,
                           dict(self.models), temperature_applied=section.temperature_applied,
                           fitted_temperature=section.fitted_temperature, temperature_note=section.temperature_note)

    def as_tta_section(self) -> TtaCalibration:
        """This calibration (fitted on TTA predictions) as the ``tta`` section of another one."""
        return TtaCalibration(self.temperature, self.fitted_on, self.threshold, self.criterion, self.sensitivity,
                              self.specificity, self.temperature_applied, self.fitted_temperature,
                              self.temperature_note)

    def calibrate(self, probs: np.ndarray) -> np.ndarray:
        return apply_temperature(probs, self.temperature)

    def raw_threshold(self) -> float | None:
        """The threshold on the uncalibrated positive probability that calls the same cases: two classes,
        ``softmax(log p / T)[1] = sigmoid(logit(p1) / T)``, so ``p1_cal >= t`` iff ``p1 >= sigmoid(T logit(t))``."""
        if self.threshold is None:
            return None
        t = min(max(self.threshold, EPS), 1 - EPS)
        return float(1.0 / (1.0 + np.exp(-self.temperature * np.log(t / (1 - t)))))


def checkpoint_digests(run_root: str | Path) -> dict[str, str]:
    """Relative path -> BLAKE2b-128 of every checkpoint the run predicts with (its folds' best, or its best)."""
    from medconvnext.data.content import file_digests
    from medconvnext.rundir import model_checkpoints

    root = Path(run_root).resolve()
    digests = file_digests(model_checkpoints(root))  # remembered by size, mtime, ctime and inode
    return {str(Path(path).relative_to(root)): digest for path, digest in digests.items()}


def check_calibration_matches(calibration: Calibration, run_root: str | Path, path: str | Path) -> None:
    """UserError when the run's checkpoints are not the ones ``calibration`` was fitted for."""
    if calibration.models and calibration.models != checkpoint_digests(run_root):
        raise UserError(f"{path}: fitted for other weights than the run's checkpoints now (retrained?); refit it with "
                        f"`medconvnext report {run_root}`")


def save_calibration(path: str | Path, calibration: Calibration) -> Path:
    path = Path(path)
    text = json.dumps(asdict(calibration), indent=2) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


def load_calibration(path: str | Path) -> Calibration:
    """Read ``calibration.json``.

    Raises:
        UserError: the file is missing or not a calibration.
    """
    path = Path(path)
    try:
        values: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        tta = values.pop("tta", None)  # absent from files written before the TTA section existed
        return Calibration(**values, tta=TtaCalibration(**tta) if tta is not None else None)
    except FileNotFoundError:
        raise UserError(f"{path}: no calibration (run `medconvnext report` on the run to fit one)") from None
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path}: not a medconvnext calibration file ({exc})") from None


def _held_out_by_image(run: RunDir, tta: bool = False) -> Predictions | None:
    """A run's held-out predictions (a cv's out-of-fold, a train run's validation set; ``tta``: those made with
    test-time augmentation), one row per image (the mean over a repeated cv's rows), sorted by image; None when the
    run has none."""
    path = run.held_out_predictions(tta)
    if not path.is_file():
        return None
    table = read_predictions(path)
    where: dict[str, list[int]] = {}
    for i, image in enumerate(table.images):
        where.setdefault(image, []).append(i)
    images = sorted(where)
    return Predictions(
        images=images,
        y_true=np.array([table.y_true[where[image][0]] for image in images], dtype=np.int64),
        probs=np.stack([table.probs[where[image]].mean(axis=0) for image in images]),
        folds=np.full(len(images), TEST_FOLD, dtype=np.int64),
        class_names=list(table.class_names),
    )


def ensemble_operating_point(runs: list[Path], tta: bool = False) -> tuple[Calibration | None, str | None]:
    """The operating point of an ensemble of runs (e.g. one recipe trained with three seeds), for two classes:
    the Youden threshold on the mean of the runs' held-out predictions, uncalibrated (temperature 1, so the same
    threshold applies to ``predict --model R1 --model R2 --threshold T``). ``tta``: on the held-out predictions
    made with test-time augmentation, for an ensemble predicted with ``--tta``.

    The runs must have held out the same cases (a fixed split column, or cv runs on the same data); else each
    run's held-out cases include cases the others trained on, and no honest threshold exists.

    Returns:
        (the calibration, None), or (None, why there is none).
    """
    tables = [_held_out_by_image(RunDir(root), tta) for root in runs]
    missing = [Path(root) for root, table in zip(runs, tables, strict=True) if table is None]
    if len(missing) == 1:
        return None, f"{missing[0]} has no held-out predictions ({RunDir(missing[0]).held_out_predictions(tta).name})"
    if missing:  # every run to fix, named at once
        named = ", ".join(f"{root} ({RunDir(root).held_out_predictions(tta).name})" for root in missing)
        return None, f"{named} have no held-out predictions"
    first = tables[0]
    if len(first.class_names) != 2:
        return None, f"an operating point needs two classes (these runs have {len(first.class_names)})"
    for root, table in zip(runs[1:], tables[1:], strict=True):
        if table.class_names != first.class_names:
            return None, f"{root} has classes {table.class_names}, {runs[0]} has {first.class_names}"
        if table.images != first.images or not np.array_equal(table.y_true, first.y_true):
            return None, (f"{runs[0]} and {root} held out different cases (no fixed split column?), so their "
                          "held-out predictions cannot be averaged without leakage")
    mean = np.mean([t.probs for t in tables], axis=0)
    try:
        point = choose_threshold(first.y_true == 1, mean[:, 1])
    except ValueError as exc:
        return None, f"the runs' held-out cases: {exc}"
    kind = "out-of-fold" if RunDir(runs[0]).is_cv() else "validation"
    made = TTA_FITTED_ON if tta else ""
    calibration = Calibration(1.0, list(first.class_names),
                              f"mean {kind} predictions{made} of the {len(runs)} runs ({len(first)} cases)",
                              positive_class=first.class_names[1], threshold=point.threshold,
                              criterion=point.criterion, sensitivity=point.sensitivity,
                              specificity=point.specificity)
    return calibration, None
