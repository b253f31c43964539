"""Rich rendering of a training run: the plan panel before the first epoch, then a progress bar with an ETA."""

from __future__ import annotations

import os
from typing import Any

from medconvnext.cli._common import console


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def plural(count: int, noun: str) -> str:
    """``plural(1, "epoch")`` -> "1 epoch"; ``plural(3, "epoch")`` -> "3 epochs"."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _params(count: int) -> str:
    return f"{count / 1e6:.2f} M" if count >= 1e5 else f"{count / 1e3:.1f} k"


def epoch_progress(fields: str) -> Any:
    """A rich progress bar: epoch, a short bar, ``fields`` (a template over the task's fields), elapsed time and
    ETA; it fits an 80-column terminal (rich cuts columns that do not fit). Started by the caller when training
    starts."""
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(bar_width=10),
        TextColumn(fields), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        console=console, transient=False,
    )


def field_of_view_words(view: list | tuple) -> str:
    """(smallest share, median share, cases cut, cases) -> the plan panel's words."""
    smallest, median, cut, cases = view
    if not cut:
        return f"the whole foreground of all {cases} training cases is inside the input"
    return (f"[yellow]the input cuts the foreground of {cut} of {cases} training cases[/yellow] (median "
            f"{median:.0%}, as little as {smallest:.0%} inside)")


def plan_panel(plan: dict[str, Any]) -> Any:
    """A short rich panel of :func:`medconvnext.engine.setup.run_plan`: preprocessing, split, model, device."""
    from rich.panel import Panel
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    p = plan["plan"]
    spacing = " x ".join(f"{s:.3g}" for s in p["spacing"])
    size = " x ".join(str(s) for s in p["input_size"])
    crop = f", crop to {p['crop']}" if p.get("crop", "none") != "none" else ""
    grid.add_row("plan", f"spacing {spacing} mm, input {size} voxels, intensity {p['intensity']}, {p['orientation']}"
                 f"{crop}")
    if p.get("patches", "none") != "none":  # the field-of-view share of one patch means nothing here
        bag = " (bags pooled by attention)" if p["patches"] == "mil" else ""
        grid.add_row("field", f"{p['patches']} patches of the input size{bag}; validation and predict tile the "
                     "whole volume")
    elif p.get("field_of_view"):
        grid.add_row("field", field_of_view_words(p["field_of_view"]))
    for side, counts in plan["split"].items():
        detail = f" ({', '.join(f'{name} {n}' for name, n in counts.items())})" if len(counts) > 1 else ""
        grid.add_row(side, f"{plural(sum(counts.values()), 'case')}{detail}")
    model = plan["model"]
    grid.add_row("model", f"{model['name']}, {_params(model['parameters'])} parameters")
    if plan.get("masking"):
        grid.add_row("masking", plan["masking"])
    amp = ", mixed precision" if plan["amp"] else ""
    grid.add_row("device", f"{plan['device']}{amp}")
    resumed = f", resuming at epoch {plan['start_epoch']}" if plan["start_epoch"] > 1 else ""
    grid.add_row("schedule", f"{plural(plan['epochs'], 'epoch')} x {plural(plan['steps_per_epoch'], 'step')}, batch "
                 f"{plan['batch_size']}{resumed}")
    return Panel(grid, title=f"[bold]{plan['run_dir']}[/bold]", title_align="left", expand=False)


def print_plan(plan: dict[str, Any], console: Any) -> None:
    """The plan panel, wide enough in a pipe for its title (the run folder) and its lines."""
    from medconvnext.cli._common import print_wide

    print_wide(plan_panel(plan), console, min_width=len(str(plan["run_dir"])) + 8)


class TrainingProgress:
    """Plan panel, then a rich progress bar (loss, validation AUC, best epoch, elapsed and remaining time).

    Implements the trainer's callbacks (``on_plan`` included). Under torchrun only rank 0 shows it (RANK is read
    here, before the process group exists).
    """

    def __enter__(self) -> TrainingProgress:
        self._task = None
        if os.environ.get("RANK", "0") != "0":
            self._progress = None
            return self
        self._progress = epoch_progress("loss {task.fields[loss]} AUC {task.fields[auc]} best {task.fields[best]}")
        self._started = False  # the live display starts with training: an early error prints no empty line
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None and self._started:
            self._progress.__exit__(*exc)

    def on_plan(self, plan: dict[str, Any]) -> None:
        if self._progress is not None:
            print_plan(plan, self._progress.console)

    def on_start(self, total_epochs: int, steps_per_epoch: int) -> None:
        if self._progress is None:
            return
        self._steps = steps_per_epoch
        if not self._started:
            self._progress.__enter__()
            self._started = True
        self._task = self._progress.add_task(
            "train", total=total_epochs * steps_per_epoch, epoch=f"1/{total_epochs}", loss="-", auc="-", best="-"
        )
        self._total_epochs = total_epochs

    def on_step(self, epoch: int, step: int, loss: float) -> None:
        if self._progress is None:
            return
        self._progress.update(
            self._task, completed=(epoch - 1) * self._steps + step, epoch=f"{epoch}/{self._total_epochs}",
            loss=f"{loss:.4f}",
        )

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        if self._progress is None:
            return
        self._progress.update(self._task, auc=_fmt(record["val_auc"]), best=str(record["best_epoch"]))
