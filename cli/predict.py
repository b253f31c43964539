"""``medconvnext predict``: class probabilities for scans, from a trained run or a cross-validation's folds."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from medconvnext.cli._common import console, run_guarded


def predict(
    inputs: list[Path] = typer.Argument(
        ..., help="Scan files (.nii, .nii.gz, .nrrd, .mha, .mhd), DICOM series folders, folders of scans "
                  "(searched recursively), or a .csv/.tsv with an 'image' column (and optionally 'label')."
    ),
    model: Path = typer.Option(
        ..., "--model", help="Run directory (its best checkpoint), checkpoint file, or cross-validation run "
                             "directory (its folds are ensembled: mean probability)."
    ),
    output: Path = typer.Option(None, "--output", "-o", help="Write predictions to a .csv or .json file."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N"),
    inference: Literal["whole", "sliding", "auto"] = typer.Option(
        None, "--inference", help="whole (input size, as trained) | sliding (windows) | auto. Default: the run's."
    ),
    roi_size: str = typer.Option(None, "--roi-size", help="Sliding window size D,H,W (default: the input size)."),
    overlap: float = typer.Option(None, "--overlap", help="Window overlap in [0, 1) (default 0.25)."),
    sw_batch_size: int = typer.Option(None, "--sw-batch-size", min=1, help="Windows per forward pass (default 4)."),
    aggregation: Literal["mean", "max", "logit_mean"] = typer.Option(
        None, "--aggregation", help="How window probabilities are combined. \\[default: mean]"),
    window_map: Path = typer.Option(
        None, "--window-map", help="Write each scan's per-window probability grid (NIfTI, grid x K) to this folder."
    ),
    tta: bool = typer.Option(
        False, "--tta/--no-tta", metavar="", help="Average the probabilities over the 8 flips of each volume."
    ),
    cam: Path = typer.Option(
        None, "--cam", help="Write a saliency map per scan (NIfTI on the scan's own grid, values in [0, 1]) here."
    ),
    cam_class: str = typer.Option(None, "--cam-class", help="Class the maps explain (default: the predicted one)."),
    cam_method: Literal["gradcam", "occlusion"] = typer.Option(
        "gradcam", "--cam-method", help="gradcam (last feature stage) or occlusion."),
    threshold: str = typer.Option(
        None, "--threshold",
        help="Two classes: call the second class when its probability is >= this value, or 'auto' for the threshold "
             "stored with the run (calibration.json, chosen on out-of-fold predictions). \\[default: the most "
             "probable class]",
    ),
    calibrate: bool = typer.Option(
        None, "--calibrate/--no-calibrate", metavar="", show_default=False,
        help="Apply the run's temperature scaling (calibration.json) to the probabilities. \\[default: on when the "
             "run has one]",
    ),
    strict: bool = typer.Option(
        False, "--strict/--no-strict", metavar="",
        help="Refuse scans whose voxel data equals a case the model trained or selected on."
    ),
) -> None:
    """Predict the class of each scan and print a table (optionally write CSV/JSON and saliency maps)."""

    def work() -> None:
        import numpy as np
        from rich.table import Table

        from medconvnext.data.inputs import resolve_prediction_inputs
        from medconvnext.data.leakage import audit_run, enforce
        from medconvnext.data.validate import require_valid
        from medconvnext.engine.inference import FoldEnsemble
        from medconvnext.engine.predictions import prediction_rows, require_finite, write_prediction_table
        from medconvnext.engine.saliency import CAM_METHODS
        from medconvnext.errors import UserError
        from medconvnext.rundir import RunDir

        if output is not None and output.suffix.lower() not in (".csv", ".json"):
            raise UserError(f"--output {output}: use a .csv or .json file name")
        if cam_method not in CAM_METHODS:
            raise UserError(f"--cam-method {cam_method!r}: choose one of {', '.join(CAM_METHODS)}")
        cases = resolve_prediction_inputs(inputs)
        require_valid(cases)  # the checks of data check/train: a NaN or blank scan is refused, not predicted
        if RunDir(model).splits.is_file():  # a checkpoint alone does not say what it was trained on
            report = audit_run(model, [case.images[0] for case in cases], eval_side="predicted")
            enforce(report, "error" if strict else "warn")
        ensemble = FoldEnsemble.load(model, device=device, tta=tta)
        ensemble.set_inference(mode=inference, roi_size=_parse_size(roi_size), overlap=overlap,
                               sw_batch_size=sw_batch_size, aggregation=aggregation)
        names = ensemble.class_names
        if cam_class is not None and cam_class not in names:
            raise UserError(f"--cam-class {cam_class!r}: unknown class (classes: {', '.join(names)})")
        if window_map is not None and ensemble.is_ensemble:
            raise UserError(f"--window-map: {model} is an ensemble of {len(ensemble.members)} folds whose grids "
                            "differ; pass one fold's directory (e.g. RUN/fold_0) to --model")
        console.print(f"{model}: {ensemble.describe()}, {len(cases)} scan(s)")
        calibration = _calibration(model, calibrate, threshold, names)  # checked before any work or write
        cut = _threshold(threshold, calibration, names)
        results = [ensemble.predict_case(case.images) for case in cases]
        probs = np.stack([r.probabilities for r in results])
        require_finite([case.image for case in cases], probs)
        if calibration is not None and calibrate is not False:
            probs = calibration.calibrate(probs)
        if window_map is not None:
            _write_window_maps(window_map, cases, [r.members[0] for r in results], names)
        if cam is not None:
            _write_cams(cam, cases, ensemble, probs, cam_class, cam_method)
        images = [case.image for case in cases]
        labels = [case.label or "" for case in cases] if any(case.label for case in cases) else None
        rows = prediction_rows(images, probs, names, labels, cut)
        table = Table("image", *(["label"] if labels else []), "prediction", "probability",
                      title=f"predictions ({model}: {ensemble.describe()})")
        for row in rows:
            # the file name keeps the table readable in a narrow terminal; the CSV/JSON has the full path
            table.add_row(Path(row["image"]).name, *([row["label"]] if labels else []), row["prediction"],
                          f"{row['prob_' + row['prediction']]:.3f}")
        console.print(table)
        if output is not None:
            write_prediction_table(output, images, probs, names, labels, cut)
            console.print(f"wrote {output}")

    run_guarded(work)


def _calibration(model: Path, calibrate: bool | None, threshold: str | None, names: list[str]):
    """The run's calibration.json (None when it has none and none is asked for)."""
    from medconvnext.engine.calibration import check_calibration_matches, load_calibration
    from medconvnext.errors import UserError
    from medconvnext.rundir import RunDir

    run = RunDir(model if model.is_dir() else model.parent)
    needed = calibrate is True or threshold == "auto"
    if not run.calibration.is_file():
        if needed:
            raise UserError(f"{run.calibration}: missing, needed by "
                            f"{'--threshold auto' if threshold == 'auto' else '--calibrate'} (run `medconvnext report "
                            f"{run.root}` to fit it from the run's held-out predictions)")
        return None
    calibration = load_calibration(run.calibration)
    if calibrate is not False or threshold == "auto":
        check_calibration_matches(calibration, run.root, run.calibration)
    if calibration.class_names != list(names):
        raise UserError(f"{run.calibration}: classes {calibration.class_names} differ from the model's {names}")
    console.print(f"calibration: T = {calibration.temperature:.3f} ({calibration.fitted_on})"
                  + (", not applied (--no-calibrate)" if calibrate is False else ""), highlight=False)
    return calibration


def _threshold(text: str | None, calibration, names: list[str]) -> float | None:
    """--threshold as a number: None (argmax), a value in [0, 1], or 'auto' (the run's stored threshold)."""
    from medconvnext.errors import UserError

    if text is None:
        return None
    if len(names) != 2:
        raise UserError(f"--threshold: only for two classes (this model has {len(names)}: {', '.join(names)})")
    if text == "auto":
        if calibration.threshold is None:
            raise UserError("--threshold auto: the run's calibration.json has no threshold")
        console.print(f"threshold: {calibration.threshold:.4f} on P({names[1]}) ({calibration.criterion}, "
                      f"{calibration.fitted_on})", highlight=False)
        return calibration.threshold
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"--threshold {text!r}: expected a number in [0, 1] or 'auto'") from None
    if not 0.0 <= value <= 1.0:
        raise UserError(f"--threshold {text!r}: expected a number in [0, 1] or 'auto'")
    return value


def _parse_size(text: str | None) -> list[int] | None:
    """``"64"`` or ``"32,64,64"`` -> [D, H, W]."""
    from medconvnext.errors import UserError

    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"--roi-size {text!r}: expected D,H,W integers, e.g. 64,64,64") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or min(values) < 1:
        raise UserError(f"--roi-size {text!r}: expected one or three positive integers")
    return values


def _unique_names(cases: list, suffix: str) -> list[str]:
    """``<case id><suffix>`` per case; a repeated case id (same file name in two folders) gets ``_2``, ``_3``..."""
    seen: dict[str, int] = {}
    names = []
    for case in cases:
        seen[case.case_id] = seen.get(case.case_id, 0) + 1
        count = seen[case.case_id]
        names.append(f"{case.case_id}{'' if count == 1 else f'_{count}'}{suffix}")
    return names


def _write_window_maps(folder: Path, cases: list, results: list, class_names: list[str]) -> None:
    from medconvnext.engine.inference import save_window_map

    written = 0
    for name, result in zip(_unique_names(cases, "_windows.nii.gz"), results, strict=True):
        if save_window_map(result, class_names, folder / name) is not None:
            written += 1
    skipped = len(cases) - written
    note = f" ({skipped} scan(s) ran whole-volume: no window map)" if skipped else ""
    console.print(f"wrote {written} window map(s) to {folder}{note}")


def _write_cams(folder: Path, cases: list, ensemble, probs, cam_class: str | None, method: str) -> None:
    import time

    from medconvnext.engine.saliency import ensemble_saliency, save_saliency

    names = ensemble.class_names
    start = time.perf_counter()
    used = set()
    for name, case, p in zip(_unique_names(cases, "_cam.nii.gz"), cases, probs, strict=True):
        target = names.index(cam_class) if cam_class is not None else int(p.argmax())
        scan_map = ensemble_saliency(ensemble, case.images, target, method)
        used.add(scan_map.method)
        save_saliency(scan_map, folder / name, f"medconvnext {scan_map.method} class={names[target]}")
    seconds = (time.perf_counter() - start) / max(len(cases), 1)
    console.print(f"wrote {len(cases)} {'/'.join(sorted(used)) or method} map(s) to {folder} ({seconds:.1f} s per "
                  f"scan; class: {cam_class or 'the predicted one'})")
