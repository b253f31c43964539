"""``medconvnext models``: list the registered models with parameters, GFLOPs and input sizes."""

from __future__ import annotations

import json

import typer

from medconvnext.cli._common import print_table, run_guarded


def models(
    input_size: tuple[int, int, int] = typer.Option(
        None, "--input-size", help="D H W to count FLOPs at (default: each model's default input size)."
    ),
    family: str = typer.Option(None, "--family", help="Only this family (convnext, convmixer, resnext, monai)."),
    as_json: bool = typer.Option(False, "--json/--no-json", metavar="", help="Print JSON instead of a table."),
) -> None:
    """List the registered models: family, parameters, GFLOPs (batch 1), minimum and default input size."""

    def body() -> None:
        # torch and the model families are imported here so that `medconvnext --help` stays fast
        from medconvnext.errors import UserError
        from medconvnext.models import list_models, model_info

        if input_size is not None and any(s < 1 for s in input_size):
            raise UserError(f"--input-size must be positive, got {input_size}")
        names = list_models(family)
        if not names:
            raise UserError(f"--family {family!r} has no models; choose one of: convnext, convmixer, resnext, monai")
        infos = [model_info(name, input_size) for name in names]
        if as_json:
            typer.echo(json.dumps(infos, indent=2))
            return
        _print_table(infos)

    run_guarded(body)


def _print_table(infos: list[dict]) -> None:
    from rich.table import Table

    table = Table(title="medconvnext models (GFLOPs = 2 x multiply-adds, batch 1)")
    for column in ("model", "family", "params (M)", "input", "GFLOPs", "min input", "default input"):
        table.add_column(column, justify="right" if column in ("params (M)", "GFLOPs") else "left", no_wrap=True)
    for info in infos:
        table.add_row(
            info["name"],
            info["family"],
            f"{info['params'] / 1e6:.2f}",
            "x".join(map(str, info["input_size"])),
            "< min" if info["gflops"] is None else f"{info['gflops']:.2f}",
            "x".join(map(str, info["min_input_size"])),
            "x".join(map(str, info["default_input_size"])),
        )
    print_table(table)
