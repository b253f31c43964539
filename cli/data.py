"""``medconvnext data``: check a dataset before training; import MedMNIST 3D files."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import typer

from medconvnext.cli import _options as options
from medconvnext.cli._common import console, err_console, print_table, run_guarded

data_app = typer.Typer(rich_markup_mode=None, help="Check datasets and import public ones.", no_args_is_help=True)


@data_app.command("check", short_help="Read and validate every case; print a summary.")
def check(
    data: Path = typer.Option(..., "--data", help="Folder (labels.csv/.tsv, datalist.json or class folders) or list."),
    skip_bad: bool = typer.Option(
        False, "--skip-bad/--no-skip-bad", metavar="", help="Warn about bad cases and plan without them (exit 0)."
    ),
    model: str = typer.Option(None, "--model", help="Model whose minimum input size the plan respects."),
    config: Path = typer.Option(None, "--config", help="YAML config whose preprocessing section is used."),
    set_: list[str] = options.SET,
) -> None:
    """Read and validate every case; print a summary and the preprocessing plan; exit 2 on bad files."""

    def work() -> None:
        from medconvnext.data.datalist import Datalist, load_datalist
        from medconvnext.data.validate import inspect_datalist

        cfg = options.build_config(config, set_).validate()  # checked before any scan is read
        datalist = load_datalist(data)
        reports = {case.case_id: found for case, found in inspect_datalist(datalist)}
        bad = [f"{r.path}: {p}" for rs in reports.values() for r in rs for p in r.problems]
        good = [c for c in datalist.cases if not any(r.problems for r in reports[c.case_id])]
        bad += _class_count_problems(datalist, good)
        _print_summary(datalist, good, reports)
        if bad and not skip_bad:
            err_console.print(f"[bold red]{len(bad)} problem(s)[/bold red] (rerun with --skip-bad to leave them out):")
            for line in bad:
                err_console.print(line, highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        for line in bad:
            err_console.print(f"[yellow]skipped[/yellow] {line}", highlight=False, soft_wrap=True)
        if not good:
            raise typer.Exit(2)
        usable = Datalist(good, datalist.classes, datalist.source)
        _print_plan(cfg, usable, _min_size(model, cfg, usable))

    run_guarded(work)


@data_app.command("import-medmnist", short_help="MedMNIST 3D .npz -> NIfTI files and labels.csv.")
def import_medmnist_command(
    npz: Path = typer.Argument(..., help="A MedMNIST 3D .npz (e.g. adrenalmnist3d.npz)."),
    out: Path = typer.Option(..., "--out", help="Folder to write images/ and labels.csv into."),
    overwrite: bool = typer.Option(False, "--overwrite/--no-overwrite", metavar="", help="Replace a non-empty --out."),
    limit: int = typer.Option(None, "--limit", min=1, help="Only the first N volumes of each split (quick tests)."),
) -> None:
    """Write one NIfTI per volume (64 mm cube) and labels.csv with the official split (train, val, and test when
    the file has one)."""

    def work() -> None:
        from medconvnext.data.medmnist import import_medmnist

        result = import_medmnist(npz, out, overwrite=overwrite, limit=limit)
        counts = ", ".join(f"{k} {v}" for k, v in result.counts.items())
        console.print(f"[bold green]imported[/bold green] {counts} volumes of {result.shape} at "
                      f"{result.spacing:.4f} mm into {result.out}")

    run_guarded(work)


def _class_count_problems(datalist, good) -> list[str]:
    counts = Counter(c.label for c in good if c.label is not None and c.split != "test")
    return [f"{datalist.source}: class {name!r} has {counts.get(name, 0)} usable training case(s); need at least 2"
            for name in datalist.classes if counts.get(name, 0) < 2]


def _min_size(model: str | None, config, datalist) -> tuple[int, int, int]:  # noqa: ANN001 - Config, Datalist
    """The minimum input size of --model, else of the config's model with its arguments (built as train builds it,
    so a bad name or argument gets train's message)."""
    from medconvnext.engine.model_setup import build_model
    from medconvnext.errors import UserError
    from medconvnext.models import get_entry

    if model is not None:
        config.model.name, config.model.args = model, {}
    try:
        get_entry(config.model.name)
    except ValueError as exc:
        raise UserError(f"{'--model' if model is not None else 'model.name'}: {exc}") from None
    return tuple(build_model(config, datalist).min_input_size)  # type: ignore[return-value]


def _print_summary(datalist, good, reports) -> None:
    import numpy as np
    from rich.table import Table

    # the heading is a line of its own: as a table title it would wrap to the width of the (narrow) table
    console.print(f"{datalist.source}: {len(datalist.cases)} cases, {len(good)} usable", soft_wrap=True,
                  highlight=False)
    table = Table()
    splits = sorted({c.split or "-" for c in datalist.cases})
    table.add_column("class")
    for split in splits:
        table.add_column(f"split {split}" if split != "-" else "cases" if len(splits) == 1 else "no split",
                         justify="right")
    for name in datalist.classes:
        table.add_row(name, *[str(sum(c.label == name and (c.split or "-") == s for c in good)) for s in splits])
    print_table(table)
    first = [reports[c.case_id][0] for c in good]
    if not first:
        return
    counts = Counter(r.shape for r in first)
    rest = len(counts) - 5
    console.print("shapes: " + ", ".join(f"{s} x{n}" for s, n in counts.most_common(5))
                  + (f" and {rest} more shape(s)" if rest > 0 else ""), soft_wrap=True)
    spacings = np.array([r.spacing for r in first])
    for label, values in (("min", spacings.min(0)), ("median", np.median(spacings, 0)), ("max", spacings.max(0))):
        console.print(f"spacing {label}: " + " x ".join(f"{v:.3g}" for v in values) + " mm")
    console.print("orientations: " + ", ".join(f"{o} x{n}" for o, n in Counter(r.orientation for r in first).items()))
    pct = np.median(np.array([r.percentiles for r in first]), axis=0)
    console.print(f"intensity (median over cases) p0.5 {pct[0]:.4g}, p50 {pct[1]:.4g}, p99.5 {pct[2]:.4g}")
    channels = Counter(sum(r.channels for r in reports[c.case_id]) for c in good)
    console.print("channels per case: " + ", ".join(f"{k} x{n}" for k, n in channels.items()))


def _print_plan(config, datalist, min_size) -> None:
    from medconvnext.cli._render import field_of_view_words
    from medconvnext.config import yaml_spelling
    from medconvnext.engine.setup import training_plan

    plan = training_plan(config, datalist, min_size)  # train's plan: from the training cases of its split
    console.print("[bold]preprocessing plan[/bold] (from the training cases that train would use):")
    for key, value in plan.transform_dict().items():  # spelled as in a config file (null, [a, b, c])
        console.print(f"  {key}: {yaml_spelling(value, quote=False)}", highlight=False)
    if plan.field_of_view:
        console.print(f"  field of view: {field_of_view_words(plan.field_of_view)}", highlight=False)
