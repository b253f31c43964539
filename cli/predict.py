"""``medconvnext predict``: class probabilities for scans, from a trained run or a cross-validation's folds."""

from __future__ import annotations

from pathlib import Path

import typer

from medconvnext.choices import Aggregation, CamMethod, InferenceMode
from medconvnext.cli import _options as options
from medconvnext.cli._common import console, print_table, run_guarded


def predict(
    inputs: list[Path] = typer.Argument(
        ..., metavar="SCAN",
        help="Scan files (.nii, .nii.gz, .hdr/.img, .nrrd, .nhdr, .mha, .mhd), DICOM series folders, folders of scans "
                  "(searched recursively), or a .csv/.tsv with an 'image' column (and optionally 'label')."
    ),
    model: list[Path] = typer.Option(
        ..., "--model", metavar="<run>",
        help="Run directory (its best checkpoint), checkpoint file, or cross-validation run "
                             "directory (its folds are ensembled: mean probability). Repeat it to ensemble several "
                             "runs (e.g. three seeds of one recipe)."
    ),
    output: Path = typer.Option(None, "--output", "-o", help="Write predictions to a .csv or .json file."),
    overwrite: bool = options.OUTPUT_OVERWRITE,
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N"),
    inference: InferenceMode = typer.Option(
        None, "--inference", help="whole (input size, as trained) | sliding (windows) | auto. Default: the run's."
    ),
    roi_size: str = typer.Option(None, "--roi-size", help="Sliding window size D,H,W (default: the input size)."),
    overlap: float = typer.Option(None, "--overlap", help="Window overlap in [0, 1). Default: the run's."),
    sw_batch_size: int = typer.Option(None, "--sw-batch-size", min=1,
                                      help="Windows per forward pass. Default: the run's."),
    aggregation: Aggregation = typer.Option(
        None, "--aggregation", help="How window probabilities are combined. [default: mean]"),
    window_map: Path = typer.Option(
        None, "--window-map", help="Write each scan's per-window probability grid (NIfTI, grid x K) to this folder."
    ),
    tta: bool = typer.Option(
        False, "--tta/--no-tta", metavar="",
        help="Average the probabilities over the 8 flips of each volume (calibration and --threshold auto: the run's "
             "fit on its held-out predictions made with TTA, when it has one)."
    ),
    cam: Path = typer.Option(
        None, "--cam", help="Write a saliency map per scan (NIfTI on the scan's own grid, values in [0, 1]) here."
    ),
    cam_class: str = typer.Option(None, "--cam-class", help="Class the maps explain (default: the predicted one)."),
    cam_method: CamMethod = typer.Option(
        "gradcam", "--cam-method", help="gradcam (last feature stage) or occlusion."),
    threshold: str = typer.Option(
        None, "--threshold",
        help="Two classes: call the second class when its probability is >= this value, or 'auto': the run's "
             "stored threshold (calibration.json, chosen on its out-of-fold or validation predictions, made with TTA "
             "under --tta); for several runs, the one chosen on their mean validation predictions. [default: the most "
             "probable class]",
    ),
    calibrate: bool = typer.Option(
        None, "--calibrate/--no-calibrate", metavar="", show_default=False,
        help="Apply the run's temperature scaling (calibration.json) to the probabilities. [default: on when the "
             "run has one]",
    ),
    strict: bool = typer.Option(
        False, "--strict/--no-strict", metavar="",
        help="Refuse scans whose voxel data equals a case the model trained or selected on."
    ),
) -> None:
    """Predict the class of each scan and print a table (optionally write CSV/JSON and saliency maps)."""

    def work() -> None:
        from rich.table import Table

        from medconvnext.engine.serving import predict_scans
        from medconvnext.errors import UserError
        from medconvnext.results.table import prediction_rows, with_decision, write_table

        if output is not None and output.suffix.lower() not in (".csv", ".json"):
            raise UserError(f"--output {output}: use a .csv or .json file name")
        if output is not None:  # before any prediction: a file medconvnext did not write is never replaced
            from medconvnext.rundir import check_output

            check_output(output, overwrite)
        options = {"mode": inference, "roi_size": _parse_size(roi_size), "overlap": overlap,
                   "sw_batch_size": sw_batch_size, "aggregation": aggregation}
        result = predict_scans(
            inputs, model, device=device, tta=tta, inference=options, calibrate=calibrate, threshold=threshold,
            strict=strict, window_map=window_map, cam=cam, cam_class=cam_class, cam_method=cam_method,
            log=lambda line: console.print(line, highlight=False), overwrite=overwrite,
        )
        labels = result.labels
        names = result.class_names
        rows = prediction_rows(result.images, result.probs, names, labels, result.threshold)
        # two classes: P(second class), the number a threshold applies to; else the predicted class's probability
        shown = f"P({names[1]})" if len(names) == 2 else "probability"
        table = Table("image", *(["label"] if labels else []), "prediction", shown,
                      title="predictions")  # what predicted is the first line of the output
        shown_names = _display_names([str(row["image"]) for row in rows])
        for row, name in zip(rows, shown_names, strict=True):
            column = "prob_" + (names[1] if len(names) == 2 else row["prediction"])
            table.add_row(name, *([row["label"]] if labels else []), row["prediction"], f"{row[column]:.3f}")
        print_table(table)
        cut = result.threshold
        decided = f"P({names[1]}) >= {cut:.4g}" if cut is not None else "the most probable class"
        calibrated = f", temperature {result.temperature:.3f}" if result.temperature is not None else ""
        console.print(f"prediction: {decided}{calibrated}", highlight=False)
        if output is not None:
            write_table(output, with_decision(rows, result.threshold, result.temperature))
            console.print(f"wrote {output}")

    run_guarded(work)


def _display_names(images: list[str]) -> list[str]:
    """File names when they tell the scans apart (readable in a narrow terminal; the CSV/JSON has the full
    paths), else the paths below the scans' common folder: two ``scan.nii.gz`` in different folders must not
    look like one scan predicted twice."""
    import os

    names = [Path(image).name for image in images]
    if len(set(names)) == len(names):
        return names
    common = os.path.commonpath([os.path.dirname(os.path.abspath(image)) for image in images])
    return [os.path.relpath(os.path.abspath(image), common) for image in images]


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
