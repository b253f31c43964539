"""``medconvnext models``."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from medconvnext.cli.main import app
from medconvnext.models import list_models


def test_models_json_lists_every_model() -> None:
    result = CliRunner().invoke(app, ["models", "--json", "--input-size", "32", "32", "32"])
    assert result.exit_code == 0, result.output
    infos = json.loads(result.output)
    assert sorted(info["name"] for info in infos) == list_models()
    for info in infos:
        assert info["input_size"] == [32, 32, 32] and info["params"] > 0
        assert info["gflops"] is None or info["gflops"] > 0


def test_models_table_and_bad_family() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["models", "--family", "resnext"])
    assert result.exit_code == 0 and "resnext_tiny" in result.output
    # into a pipe (no terminal width) the table keeps every column whole instead of cutting it at 80 characters
    assert "default input" in result.output and "…" not in result.output
    result = runner.invoke(app, ["models", "--family", "vit"])
    assert result.exit_code == 2 and "--family" in result.output
