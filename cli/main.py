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


app.command("train")(train.train)
app.command("predict")(predict.predict)
app.command("pretrain")(pretrain.pretrain)
app.add_typer(data.data_app, name="data")
app.add_typer(cache.cache_app, name="cache")
app.command("models")(models.models)
app.command("cv")(cv.cv)
app.command("evaluate")(evaluate.evaluate)
app.command("report")(report.report)
app.command("export")(export.export)
app.command("tune")(tune.tune)


def main() -> None:
    """Console-script entry point."""
    app()
