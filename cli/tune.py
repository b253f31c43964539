"""``medconvnext tune``: an Optuna search over the recipe, each trial a normal train (or cv) run; resumable."""

from __future__ import annotations

from pathlib import Path

import typer

from medconvnext.cli import _options as options
from medconvnext.cli._common import console, print_table, run_guarded


def tune(
    data: Path = options.DATA,
    out: Path = typer.Option(None, "--out", help="Study folder: study.db, trial_<n>/ runs, best_config.yaml. "
                             "Rerunning the command continues the study there."),
    trials: int = typer.Option(20, "--trials", min=1, help="Finished trials wanted in the study, in total."),
    space: Path = typer.Option(
        None, "--space", help="YAML search space (config field -> distribution). [default: lr, weight decay, "
        "drop path, EMA, augmentation, model size]"),
    cv: int = typer.Option(None, "--cv", min=2, help="Score each trial by K-fold cross-validation (pooled "
                           "out-of-fold AUC, no pruning). [default: one train run, best validation AUC]"),
    model: str = options.MODEL,
    epochs: int = options.EPOCHS,
    batch_size: int = options.BATCH_SIZE,
    seed: int = options.SEED,
    device: str = options.DEVICE,
    config: Path = options.CONFIG,
    set_: list[str] = options.SET,
    show_space: bool = typer.Option(False, "--show-space/--no-show-space", metavar="",
                                    help="Print the search space as YAML and exit."),
) -> None:
    """Search hyperparameters with Optuna (pip install 'medconvnext[tune]'): median pruning on the validation AUC
    of every epoch, a table of the trials, and best_config.yaml for `medconvnext train --config`."""

    def work() -> None:
        from medconvnext.cli._render import TrainingProgress
        from medconvnext.errors import UserError
        from medconvnext.tuning import load_space, space_yaml
        from medconvnext.tuning import tune as run_study

        search = load_space(space)
        if show_space:
            console.print(space_yaml(search), highlight=False, markup=False)
            return
        if out is None:
            raise UserError("--out is required (the study folder)")
        cfg = options.build_config(config, set_, data=data, model=model, epochs=epochs, batch_size=batch_size,
                                   seed=seed, device=device)
        progress = TrainingProgress()
        with progress:
            result = run_study(cfg, out, trials, search, cv, callbacks=lambda: progress,
                               log=lambda line: console.print(line, highlight=False, markup=False))
        render_trials(result)

    run_guarded(work)


def render_trials(result) -> None:  # noqa: ANN001 - a medconvnext.tuning.TuneResult
    """The trials as a rich table, best first among the complete ones, and where best_config.yaml is."""
    from rich.table import Table

    names = sorted({name for row in result.trials for name in row.params})
    table = Table("trial", "state", "AUC", "epochs", *names, title=f"trials ({result.out / 'study.db'})")
    best = result.best.number if result.best is not None else None
    for row in result.trials:
        style = "bold green" if row.number == best else None
        values = [_fmt(row.params.get(name)) for name in names]
        table.add_row(str(row.number), row.state, "n/a" if row.value is None else f"{row.value:.4f}",
                      str(row.epochs or ""), *values, style=style)
    print_table(table)
    if result.best_config is not None:
        console.print(f"[bold green]best[/bold green]: trial {best}, AUC {result.best.value:.4f}; "
                      f"train it with: medconvnext train --config {result.best_config} --out RUN", highlight=False)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "" if value is None else str(value)
