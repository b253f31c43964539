"""The ``medconvnext`` app: one module per command, composed here.

Nothing heavy is imported at module level so that ``medconvnext --help`` answers fast.
"""

from __future__ import annotations

import typer

from medconvnext.cli import cache, cv, data, evaluate, export, models, predict, pretrain, report, train, tune
from medconvnext.cli._common import State

app = typer.Typer(
    name="medconvnext",
    help="Train, cross-validate and serve 3D classifiers for CT and MRI volumes.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help wraps at any width; rich's option boxes cut text at 80 columns
    context_settings={"max_content_width": 100},
)


@app.callback()
def _global_options(
    debug: bool = typer.Option(False, "--debug/--no-debug", metavar="", help="Show full tracebacks on errors."),
) -> None:
    State.debug = debug


# short help: the command list fits 80 columns (click cuts a longer first sentence)
app.command("train", short_help="Train a classifier; keep the best checkpoint by val AUC.")(train.train)
app.command("predict", short_help="Predict scans with a run, a cv fold ensemble or several runs.")(predict.predict)
app.command("pretrain", short_help="Pretrain a ConvNeXt encoder by masked reconstruction.")(pretrain.pretrain)
app.add_typer(data.data_app, name="data")
app.add_typer(cache.cache_app, name="cache")
app.command("models", short_help="List the registered models: family, parameters, GFLOPs.")(models.models)
app.command("cv", short_help="Cross-validate: one model per fold, out-of-fold report.")(cv.cv)
app.command("evaluate", short_help="Evaluate runs on a labelled split: metrics and report.")(evaluate.evaluate)
app.command("report", short_help="Recompute a run's metrics, calibration and report.")(report.report)
app.command("export", short_help="Export a model to TorchScript or ONNX.")(export.export)
app.command("tune", short_help="Search hyperparameters with Optuna.")(tune.tune)


def main() -> None:
    """Console-script entry point. A usage error found while parsing (an unknown option, a value of the wrong type
    or out of its range, a missing argument) is one line and exit 2, like every other user error, instead of
    click's usage block; ``COMMAND --help`` still lists the options."""
    import sys

    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        sys.exit(130)
    except typer.TyperException as error:  # click's ClickException and UsageError
        if type(error).__name__ == "NoArgsIsHelpError":  # a bare group: its help, as click prints it
            typer.echo(error.format_message(), err=True)  # type: ignore[attr-defined]
            sys.exit(2)
        ctx = getattr(error, "ctx", None)
        where = f"{ctx.command_path}: " if ctx is not None else ""
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        message = " ".join(error.format_message().split())  # type: ignore[attr-defined]
        typer.echo(f"error: {where}{message}{hint}", err=True)
        sys.exit(getattr(error, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)
