"""``medconvnext predict``: class probabilities for scans, from a trained run."""

from __future__ import annotations

from pathlib import Path

import typer

from medconvnext.cli._common import console, run_guarded


def predict(
    scans: list[Path] = typer.Argument(..., help="Scan files (.nii, .nii.gz, .nrrd, .mha, ...)."),
    model: Path = typer.Option(..., "--model", help="Run directory (uses its best checkpoint) or a checkpoint file."),
    output: Path = typer.Option(None, "--output", "-o", help="Write predictions to a .csv or .json file."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N"),
    inference: str = typer.Option(
        None, "--inference", help="whole (input size, as trained) | sliding (windows) | auto. Default: the run's."
    ),
    roi_size: str = typer.Option(None, "--roi-size", help="Sliding window size D,H,W (default: the input size)."),
    overlap: float = typer.Option(None, "--overlap", help="Window overlap in [0, 1) (default 0.25)."),
    sw_batch_size: int = typer.Option(None, "--sw-batch-size", min=1, help="Windows per forward pass (default 4)."),
    aggregation: str = typer.Option(None, "--aggregation", help="mean | max | logit_mean (default mean)."),
    window_map: Path = typer.Option(
        None, "--window-map", help="Write each scan's per-window probability grid (NIfTI, grid x K) to this folder."
    ),
) -> None:
    """Predict the class of each scan and print a table (optionally write CSV/JSON)."""

    def work() -> None:
        import numpy as np
        from rich.table import Table

        from medconvnext.engine.inference import Predictor, check_inference, inference_from_options
        from medconvnext.engine.predictions import prediction_rows, write_prediction_table
        from medconvnext.errors import UserError

        if output is not None and output.suffix.lower() not in (".csv", ".json"):
            raise UserError(f"--output {output}: use a .csv or .json file name")
        predictor = Predictor.load(model, device=device)
        predictor.inference = inference_from_options(
            predictor.inference, mode=inference, roi_size=_parse_size(roi_size), overlap=overlap,
            sw_batch_size=sw_batch_size, aggregation=aggregation,
        )
        check_inference(predictor.inference)
        results = [predictor.predict_file(scan) for scan in scans]
        probs = np.stack([r.probabilities for r in results])
        if window_map is not None:
            _write_window_maps(window_map, scans, results, predictor.class_names)
        images = [str(s) for s in scans]
        rows = prediction_rows(images, probs, predictor.class_names)
        table = Table("image", "prediction", "probability", title=f"predictions ({model})")
        for row in rows:
            # the file name keeps the table readable in a narrow terminal; the CSV/JSON has the full path
            table.add_row(Path(row["image"]).name, row["prediction"], f"{row['prob_' + row['prediction']]:.3f}")
        console.print(table)
        if output is not None:
            write_prediction_table(output, images, probs, predictor.class_names)
            console.print(f"wrote {output}")

    run_guarded(work)


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


def _write_window_maps(folder: Path, scans: list[Path], results: list, class_names: list[str]) -> None:
    from medconvnext.data.datalist import case_id_from_path
    from medconvnext.engine.inference import save_window_map

    written = 0
    for scan, result in zip(scans, results, strict=True):
        if save_window_map(result, class_names, folder / f"{case_id_from_path(scan)}_windows.nii.gz") is not None:
            written += 1
    skipped = len(scans) - written
    note = f" ({skipped} scan(s) ran whole-volume: no window map)" if skipped else ""
    console.print(f"wrote {written} window map(s) to {folder}{note}")
