"""``predict`` as a library call: validate the scans, audit them against the run, predict (whole or sliding
windows, TTA, fold ensembles), calibrate, apply the operating point, and write window and saliency maps.

The CLI only parses its options, calls :func:`predict_scans` and renders the result; everything it prints along
the way comes through ``log`` (one line each).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medconvnext.data.inputs import resolve_prediction_inputs
from medconvnext.engine.gate import predict_cases
from medconvnext.engine.inference import FoldEnsemble, save_window_map
from medconvnext.engine.saliency import CAM_METHODS, ensemble_saliency, save_saliency
from medconvnext.errors import UserError
from medconvnext.fileio import start_manifest
from medconvnext.models.mil import is_mil
from medconvnext.results.calibration import (
    TTA_CALIBRATION_HINT,
    TTA_THRESHOLD_NOTE,
    Calibration,
    check_calibration_matches,
    ensemble_operating_point,
    load_calibration,
)
from medconvnext.rundir import RunDir, check_output, check_writable

Log = Callable[[str], None]


@dataclass
class ScanPredictions:
    """What :func:`predict_scans` returns: one row per scan."""

    images: list[str]
    labels: list[str] | None  # when the inputs (a CSV) carry labels
    probs: np.ndarray  # (N, K), calibrated when a calibration was applied
    class_names: list[str]
    threshold: float | None  # on P(class 1) for two classes; None = the most probable class
    temperature: float | None  # the calibration temperature applied to ``probs``; None = uncalibrated
    description: str  # e.g. "ensemble of 5 folds"


def predict_scans(
    inputs: Sequence[str | Path],
    model: str | Path | Sequence[str | Path],
    *,
    device: str = "auto",
    tta: bool = False,
    inference: dict[str, Any] | None = None,
    calibrate: bool | None = None,
    threshold: str | None = None,
    strict: bool = False,
    window_map: Path | None = None,
    cam: Path | None = None,
    cam_class: str | None = None,
    cam_method: str = "gradcam",
    log: Log = print,
    overwrite: bool = False,
) -> ScanPredictions:
    """Predict every scan of ``inputs`` with the run (or checkpoint, or cv run) ``model``; several runs are one
    ensemble (the mean probability of all their models, e.g. one recipe trained with three seeds).

    Every check runs before any prediction or write: the inputs (the validator of ``data check``), the leakage
    audit against the run's cases (``strict``: refuse), the calibration and threshold options.

    ``overwrite``: the window and saliency maps may replace files of the same name that medconvnext did not write.

    Raises:
        UserError: a bad input, option or run, or probabilities that are not finite.
    """
    models = [Path(m) for m in ([model] if isinstance(model, (str, Path)) else model)]
    if not models:
        raise UserError("--model: give at least one run directory or checkpoint")
    if cam_method not in CAM_METHODS:
        raise UserError(f"--cam-method {cam_method!r}: choose one of {', '.join(CAM_METHODS)}")
    if len(models) > 1 and calibrate is True:
        raise UserError(f"--calibrate: a calibration (calibration.json) belongs to one run; an ensemble of "
                        f"{len(models)} runs is predicted uncalibrated (drop --calibrate, or pass one run)")
    seen = [m.resolve() for m in models]
    if len(set(seen)) < len(seen):
        twice = next(m for i, m in enumerate(models) if seen[i] in seen[:i])
        raise UserError(f"--model {twice}: given twice; each run of an ensemble counts once")
    parse_threshold(threshold)  # a bad number is refused before any model is loaded
    cases = resolve_prediction_inputs(list(inputs))
    for folder, suffix, option in ((window_map, "_windows.nii.gz", "--window-map"), (cam, "_cam.nii.gz", "--cam")):
        if folder is not None:  # before any work: a map never replaces a file medconvnext did not write
            _check_map_folder(Path(folder), unique_names(cases, suffix), overwrite, option)

    def check(ensemble: FoldEnsemble) -> tuple[Calibration | None, bool, float | None]:
        """The options that need the loaded models, before any prediction or write."""
        _check_models(ensemble, models, cam, cam_class, window_map)
        log(f"{', '.join(str(m) for m in models)}: {ensemble.describe()}, {len(cases)} scan(s)")
        # a calibration is fitted for one run's models, not for an ensemble of runs
        if len(models) == 1:
            calibration, with_tta = run_calibration(models[0], calibrate, threshold, ensemble.class_names, log, tta)
        else:
            calibration, with_tta = ensemble_calibration(models, threshold, ensemble.class_names, log, tta)
        cut = resolve_threshold(threshold, calibration, ensemble.class_names, log, calibrated=calibrate is not False)
        if tta and threshold == "auto" and not with_tta:  # a run without TTA held-out predictions
            log(f"note: {TTA_THRESHOLD_NOTE}; {TTA_CALIBRATION_HINT}")
        return calibration, with_tta, cut

    gated = predict_cases(cases, models, device=device, tta=tta, inference=inference,
                          leakage="error" if strict else "warn", eval_side="predicted", check=check)
    ensemble, results, probs = gated.ensemble, gated.results, gated.probs
    names = ensemble.class_names
    calibration, _, cut = gated.checked
    temperature = None
    if (calibration is not None and calibrate is not False and len(models) == 1  # an ensemble's is T = 1
            and calibration.temperature_applied):
        probs = calibration.calibrate(probs)
        temperature = calibration.temperature
    if window_map is not None:
        write_window_maps(window_map, cases, [r.members[0] for r in results], names, log)
    if cam is not None:
        write_cams(cam, cases, ensemble, probs, cam_class, cam_method, log)
    labels = [case.label or "" for case in cases] if any(case.label for case in cases) else None
    return ScanPredictions([case.image for case in cases], labels, probs, names, cut, temperature,
                           ensemble.describe())


def _check_models(ensemble: FoldEnsemble, models: list[Path], cam: Path | None, cam_class: str | None,
                  window_map: Path | None) -> None:
    """The map options against the loaded models (UserError): a known class, no CAM of a MIL model, one grid."""
    label = ", ".join(str(m) for m in models)  # what predicts, in messages
    names = ensemble.class_names
    if cam_class is not None and cam_class not in names:
        raise UserError(f"--cam-class {cam_class!r}: unknown class (classes: {', '.join(names)})")
    if cam is not None and any(is_mil(member.model) for member in ensemble.members):
        raise UserError(f"--cam: {label} is a multiple-instance model (train.patches=mil), whose map is the "
                        "attention per window: pass --window-map instead")
    if window_map is not None and ensemble.is_ensemble:
        raise UserError(f"--window-map: {label} is an ensemble of {len(ensemble.members)} models whose grids "
                        "differ; pass one run, or one fold's directory (e.g. RUN/fold_0), to --model")


def run_calibration(model: Path, calibrate: bool | None, threshold: str | None, names: list[str],
                    log: Log, tta: bool = False) -> tuple[Calibration | None, bool]:
    """The run's ``calibration.json`` (None when it has none and none is asked for), and whether it is the fit on
    TTA held-out predictions: with ``tta``, its TTA section when it has one (the probabilities it is applied to
    are flip averages too). UserError when it is needed and missing, fitted for other weights, or for other
    classes."""
    run = RunDir(model if model.is_dir() else model.parent)
    needed = calibrate is True or threshold == "auto"
    if not run.calibration.is_file():
        if needed:
            raise UserError(f"{run.calibration}: missing, needed by "
                            f"{'--threshold auto' if threshold == 'auto' else '--calibrate'} (run `medconvnext report "
                            f"{run.root}` to fit it from the run's held-out predictions)")
        return None, False
    calibration = load_calibration(run.calibration)
    if calibrate is not False or threshold == "auto":
        check_calibration_matches(calibration, run.root, run.calibration)
    if calibration.class_names != list(names):
        raise UserError(f"{run.calibration}: classes {calibration.class_names} differ from the model's {names}")
    served = calibration.for_tta() if tta else None
    calibration = served if served is not None else calibration
    if not calibration.temperature_applied:  # the run's rule kept T = 1: say so, and why
        log(f"calibration: temperature {calibration.temperature_note} ({calibration.fitted_on}); probabilities "
            "uncalibrated")
    else:
        log(f"calibration: T = {calibration.temperature:.3f} ({calibration.fitted_on})"
            + (", not applied (--no-calibrate)" if calibrate is False else ", applied"))
    return calibration, served is not None


def ensemble_calibration(models: list[Path], threshold: str | None, names: list[str], log: Log, tta: bool = False
                         ) -> tuple[Calibration | None, bool]:
    """For ``--threshold auto`` with several runs: the ensemble's operating point, chosen on the mean of the runs'
    held-out predictions (uncalibrated; :func:`~medconvnext.results.calibration.ensemble_operating_point`), and
    whether it was chosen on their TTA ones (``tta`` and every run has them)."""
    if threshold != "auto":
        return None, False
    calibration, tta_missing = ensemble_operating_point(models, tta=True) if tta else (None, None)
    with_tta = calibration is not None
    if tta_missing:  # names the run without TTA held-out predictions
        log(f"note: no TTA operating point for this ensemble: {tta_missing}")
    if calibration is None:
        calibration, why = ensemble_operating_point(models)
        if calibration is None:
            raise UserError(f"--threshold auto: no operating point for this ensemble of {len(models)} runs: {why}")
    if calibration.class_names != list(names):
        raise UserError(f"--threshold auto: the runs' held-out predictions have classes {calibration.class_names}, "
                        f"the models {names}")
    return calibration, with_tta


def parse_threshold(text: str | None) -> float | str | None:
    """--threshold: None, ``"auto"``, or a number in [0, 1] (UserError otherwise)."""
    if text is None or text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"--threshold {text!r}: expected a number in [0, 1] or 'auto'") from None
    if not 0.0 <= value <= 1.0:
        raise UserError(f"--threshold {text!r}: expected a number in [0, 1] or 'auto'")
    return value


def resolve_threshold(text: str | None, calibration: Calibration | None, names: list[str], log: Log,
                      calibrated: bool = True) -> float | None:
    """--threshold as a number: None (argmax), a value in [0, 1], or 'auto' (the run's stored threshold, on the
    probabilities as they are served: on the raw ones when ``calibrated`` is False, see
    :meth:`Calibration.raw_threshold`)."""
    value = parse_threshold(text)
    if value is None:
        return None
    if len(names) != 2:
        raise UserError(f"--threshold: only for two classes (this model has {len(names)}: {', '.join(names)})")
    if value != "auto":
        return float(value)
    if calibration is None or calibration.threshold is None:
        raise UserError("--threshold auto: the run's calibration.json has no threshold")
    if calibrated or calibration.temperature == 1.0:
        log(f"threshold: {calibration.threshold:.4f} on P({names[1]}) ({calibration.criterion}, "
            f"{calibration.fitted_on})")
        return calibration.threshold
    raw = calibration.raw_threshold()
    log(f"threshold: {raw:.4f} on the uncalibrated P({names[1]}) (--no-calibrate; the same cases as "
        f"{calibration.threshold:.4f} on the calibrated one; {calibration.criterion}, {calibration.fitted_on})")
    return raw


def unique_names(cases: list, suffix: str) -> list[str]:
    """``<case id><suffix>`` per case; a repeated case id (same file name in two folders) gets ``_2``, ``_3``..."""
    seen: dict[str, int] = {}
    names = []
    for case in cases:
        seen[case.case_id] = seen.get(case.case_id, 0) + 1
        count = seen[case.case_id]
        names.append(f"{case.case_id}{'' if count == 1 else f'_{count}'}{suffix}")
    return names


def _check_map_folder(folder: Path, names: list[str], overwrite: bool, option: str) -> None:
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{option} {folder}: is a file, not a folder")
    check_writable(folder, option)
    for name in names:
        check_output(folder / name, overwrite, option)


def _own_map_folder(folder: Path) -> None:
    """A new or empty maps folder gets a manifest, so the next predict may replace its maps; a folder already
    holding other files gets none (its maps are then replaced only with --overwrite)."""
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        start_manifest(folder, "maps")


def write_window_maps(folder: Path, cases: list, results: list, class_names: list[str], log: Log) -> None:
    """Each scan's per-window probability grid as NIfTI (scans that ran whole-volume have none)."""
    _own_map_folder(folder)
    written = 0
    for name, result in zip(unique_names(cases, "_windows.nii.gz"), results, strict=True):
        if save_window_map(result, class_names, folder / name) is not None:
            written += 1
    skipped = len(cases) - written
    note = f" ({skipped} scan(s) ran whole-volume: no window map)" if skipped else ""
    log(f"wrote {written} window map(s) to {folder}{note}")


def write_cams(folder: Path, cases: list, ensemble: Any, probs: np.ndarray, cam_class: str | None, method: str,
               log: Log) -> None:
    """A saliency map per scan on the scan's own grid (Grad-CAM, or occlusion where Grad-CAM has no resolution)."""
    names = ensemble.class_names
    _own_map_folder(folder)
    start = time.perf_counter()
    used = set()
    for name, case, p in zip(unique_names(cases, "_cam.nii.gz"), cases, probs, strict=True):
        target = names.index(cam_class) if cam_class is not None else int(p.argmax())
        scan_map = ensemble_saliency(ensemble, case.images, target, method)
        used.add(scan_map.method)
        save_saliency(scan_map, folder / name, f"medconvnext {scan_map.method} class={names[target]}")
    seconds = (time.perf_counter() - start) / max(len(cases), 1)
    log(f"wrote {len(cases)} {'/'.join(sorted(used)) or method} map(s) to {folder} ({seconds:.1f} s per "
        f"scan; class: {cam_class or 'the predicted one'})")
