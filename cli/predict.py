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
) -> None:
    """Predict the class of each scan and print a table (optionally write CSV/JSON)."""

    def work() -> None:
        from rich.table import Table

        from medconvnext.engine.inference import Predictor
        from medconvnext.engine.predictions import prediction_rows, write_prediction_table
        from medconvnext.errors import UserError

        if output is not None and output.suffix.lower() not in (".csv", ".json"):
            raise UserError(f"--output {output}: use a .csv or .json file name")
        predictor = Predictor.load(model, device=device)
        probs = predictor.predict_files(scans)
        images = [str(s) for s in scans]
        rows = prediction_rows(images, probs, predictor.class_names)
        table = Table("image", "prediction", "probability", title=f"predictions ({model})")
        for row in rows:
            table.add_row(row["image"], row["prediction"], f"{row['prob_' + row['prediction']]:.3f}")
        console.print(table)
        if output is not None:
            write_prediction_table(output, images, probs, predictor.class_names)
            console.print(f"wrote {output}")

    run_guarded(work)
