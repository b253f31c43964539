"""``medconvnext report``: (re)write the report of a cv run, a train run or an evaluate folder."""

from __future__ import annotations

from pathlib import Path

import typer

from medconvnext.cli import _options as options
from medconvnext.cli._common import run_guarded


def report(
    run_dir: Path = typer.Argument(..., help="A cv run directory, a train run directory or an evaluate folder."),
    n_boot: int = typer.Option(1000, "--n-boot", min=0, help="Bootstrap resamples for the 95% CIs."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed (cv and evaluate use 0)."),
    target_sensitivity: float = options.TARGET_SENSITIVITY,
    overwrite: bool = options.OUTPUT_OVERWRITE,
) -> None:
    """Recompute the metrics (summary JSON) and rewrite report.md / report.html with the figures.

    For a cv or train run this also (re)fits calibration.json (temperature and threshold) on its held-out
    predictions.
    """

    def work() -> None:
        from medconvnext.cli.cv import render_summary
        from medconvnext.reports.run import report_run

        result = report_run(run_dir, n_boot=n_boot, seed=seed, target_sensitivity=target_sensitivity,
                            overwrite=overwrite)
        # the pooled set of a train run is its validation set; of an evaluate folder, the evaluated cases
        label = {"train": "validation", "evaluate": "evaluated"}.get(result.kind, "all")
        render_summary(result.summary, result.files, run_dir, label=label)

    run_guarded(work)
