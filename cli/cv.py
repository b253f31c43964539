"""``medconvnext cv``: K-fold cross-validation into one run directory, with out-of-fold predictions and a report."""

from __future__ import annotations

from pathlib import Path

import typer

from medconvnext.cli import _options as options
from medconvnext.cli._common import console, print_table, resume_hint, run_guarded


def cv(
    data: Path = options.DATA,
    folds: int = typer.Option(5, "--folds", min=2, help="Number of folds K."),
    out: Path = typer.Option(..., "--out", help="Run directory (continued when it holds the same cross-validation)."),
    repeats: int = typer.Option(1, "--repeats", min=1, help="Repeat the K folds with different shuffles."),
    group_by: str = typer.Option(
        None, "--group-by", help="Keep cases with the same value of this column in one fold (default: subject)."
    ),
    model: str = options.MODEL,
    epochs: int = options.EPOCHS,
    batch_size: int = options.BATCH_SIZE,
    lr: float = options.LR,
    seed: int = options.SEED,
    device: str = options.DEVICE,
    config: Path = options.CONFIG,
    set_: list[str] = options.SET,
    overwrite: bool = typer.Option(
        False, "--overwrite/--no-overwrite", metavar="", help="Start again, replacing what is in --out."),
    strict: bool = options.STRICT,
    n_boot: int = typer.Option(1000, "--n-boot", min=0, help="Bootstrap resamples for the report's 95% CIs."),
    target_sensitivity: float = options.TARGET_SENSITIVITY,
    tracking: options.Tracking = options.TRACKING,
    tracking_uri: str = options.TRACKING_URI,
    experiment: str = options.EXPERIMENT,
) -> None:
    """Cross-validate: train one model per fold, pool the out-of-fold predictions, write the report.

    Re-running the same command continues an interrupted cross-validation fold by fold.
    """

    def work() -> None:
        from medconvnext.cli.train import TrainingProgress, group, tracker
        from medconvnext.engine.cv import cross_validate

        cfg = options.build_config(config, set_, data=data, model=model, epochs=epochs, batch_size=batch_size,
                                   lr=lr, seed=seed, device=device, strict=strict)
        with tracker(tracking, tracking_uri, experiment, parent=out.name, parent_dir=out) as track, \
                TrainingProgress() as progress:
            result = cross_validate(cfg, out, folds=folds, repeats=repeats, group_by=group_by, overwrite=overwrite,
                                    callbacks=group(progress, track),
                                    log=lambda line: console.print(line, highlight=False), n_boot=n_boot,
                                    target_sensitivity=target_sensitivity)
        from medconvnext.engine import distributed

        main = distributed.is_main()
        distributed.cleanup()
        if main:  # under torchrun only rank 0 reports
            render_summary(result.summary, result.report, result.run_dir)

    started = resume_hint(out, "")
    run_guarded(work, lambda: started() and "rerun the same `medconvnext cv` command to continue it (finished folds "
                                            "are kept)")


def render_summary(summary: dict, files: dict, where: Path, label: str = "all") -> None:
    """Headline metrics (pooled / test) with their CIs, the operating point, and where the report is.

    ``label`` names the pooled set when it is not out-of-fold (e.g. the evaluated split)."""
    from rich.table import Table

    table = Table("set", "cases", "AUC", "95% CI", "accuracy", "balanced acc.", title="metrics")
    sets = [("out-of-fold" if summary["scope"] == "out_of_fold" else label, summary["pooled"])]
    if summary.get("test"):
        sets.append(("test (ensemble)", summary["test"]))
    for name, m in sets:
        interval = _interval(m.get("ci", {}).get("auc"))
        table.add_row(name, str(m["n"]), _fmt(m["auc"]), interval, _fmt(m["accuracy"]), _fmt(m["balanced_accuracy"]))
    print_table(table)
    cal = summary.get("calibration")
    if cal:
        op = cal.get("operating_point")
        if op:
            ci = op["ci"]
            console.print(
                f"operating point ({op['criterion']}): P({op['positive_class']}) >= {op['threshold']:.3f} (95% CI "
                f"{_interval(ci.get('threshold'))}) gives "
                f"sensitivity {_fmt(op['sensitivity'])} ({_interval(ci['sensitivity'])}), specificity "
                f"{_fmt(op['specificity'])} ({_interval(ci['specificity'])})", highlight=False)
        if cal.get("temperature_fitted", True) and not cal.get("temperature_applied", True):
            console.print(f"calibration: {cal['temperature_note']} (T = 1)", highlight=False)
        elif cal.get("temperature_fitted", True):
            console.print(f"calibration: T = {cal['temperature']:.3f}, ECE {cal['ece_before']:.3f} -> "
                          f"{cal['ece_after']:.3f}", highlight=False)
        else:
            console.print(f"threshold chosen on the {cal['fitted_on']}; uncalibrated (T = 1)", highlight=False)
        tta = cal.get("tta")
        if tta:  # the run's fit on its held-out predictions made with TTA, used by predict/evaluate --tta
            point = ""
            if op and tta.get("threshold") is not None:
                point = f"P({op['positive_class']}) >= {tta['threshold']:.3f}, "
            scaled = f"T = {tta['temperature']:.3f}" if tta.get("temperature_applied", True) else "uncalibrated"
            console.print(f"with --tta: {point}{scaled} (fitted on the {tta['fitted_on']})", highlight=False)
    if summary.get("operating_point_missing"):
        console.print(f"no operating point: {summary['operating_point_missing']}", highlight=False)
    report = files.get("html")
    console.print(f"[bold green]done[/bold green]: report in {report or where}", highlight=False)


def _interval(ci: list | None) -> str:
    from medconvnext.results.metrics import ci_text

    return ci_text(ci)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
