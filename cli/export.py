"""``medconvnext export``: a trained model as TorchScript or ONNX, with its preprocessing as JSON."""

from __future__ import annotations

from pathlib import Path

import typer

from medconvnext.choices import ExportFormat
from medconvnext.cli import _options as options
from medconvnext.cli._common import console, err_console, run_guarded


def export(
    run: Path = typer.Argument(..., help="Run directory (its best checkpoint) or checkpoint file; one fold of a cv."),
    fmt: ExportFormat = typer.Option(
        "torchscript", "--format", "-f", help="Model format (onnx needs: pip install medconvnext[onnx])."
    ),
    out: Path = typer.Option(
        None, "--out", "-o", help="Model file (default RUN/model.torchscript.pt or RUN/model.onnx); the "
                                  "preprocessing goes beside it as <name>.preprocessing.json."
    ),
    overwrite: bool = options.OUTPUT_OVERWRITE,
) -> None:
    """Export the model for the preprocessed tensor (N x C x D x H x W -> N x K logits) and check it against eager."""

    def work() -> None:
        from rich.markup import escape

        from medconvnext.engine.export import TOLERANCE, ExportMismatchError, export_model

        try:
            result = export_model(run, fmt, out, overwrite=overwrite)
        except ExportMismatchError as exc:
            err_console.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        console.print(f"wrote {result.model_path} ({result.format}) and {result.preprocessing_path}")
        console.print(f"exported vs eager outputs: max abs diff {result.max_abs_diff:.2e} (tolerance {TOLERANCE:g})")

    run_guarded(work)
