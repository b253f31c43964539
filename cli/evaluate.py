"""``medconvnext evaluate``: predictions, metrics and the report of a run on any labelled set."""

from __future__ import annotations

from pathlib import Path

import typer

from medconvnext.choices import EvalSplit
from medconvnext.cli import _options as options
from medconvnext.cli._common import console, run_guarded


def evaluate(
    run_dirs: list[Path] = typer.Argument(
        ..., metavar="RUN_DIR",
        help="A cv run directory (ensemble of its folds) or a train run (best); several runs are ensembled."
    ),
    data: Path = typer.Option(..., "--data", help="Labelled data: folder, CSV/TSV or JSON datalist."),
    split: EvalSplit = typer.Option(
        "test", "--split", help="Which cases, by the data's split column."),
    out: Path = typer.Option(None, "--out", help="Output folder (default RUN_DIR/eval_<split>)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N"),
    strict: bool = options.STRICT,
    n_boot: int = typer.Option(1000, "--n-boot", min=0, help="Bootstrap resamples for the 95% CIs."),
    tta: bool = typer.Option(
        False, "--tta/--no-tta", metavar="",
        help="Average each model's probabilities over the 8 flips (scored at the operating point fitted on the runs' "
             "held-out predictions made with TTA, when they have them)."
    ),
) -> None:
    """Evaluate a trained run (or an ensemble of runs) on a labelled set: predictions.csv, summary.json, report."""

    def work() -> None:
        from medconvnext.cli.cv import render_summary
        from medconvnext.engine.evaluate import evaluate_run_on

        result = evaluate_run_on(run_dirs, data, split=split, out=out, device=device,
                                 leakage="error" if strict else "warn", n_boot=n_boot, tta=tta)
        console.print(f"evaluated {result.cases} {split} case(s) with {result.models} model(s)", highlight=False)
        if tta:  # which operating point a TTA evaluation was scored at (before the numbers it speaks of)
            from medconvnext.reports.run import tta_note

            note = tta_note(result.summary.get("calibration"))
            if note:
                console.print(note, highlight=False)
        render_summary(result.summary, result.files, result.out_dir, label=split)

    run_guarded(work)
