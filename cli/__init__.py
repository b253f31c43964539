"""The Typer CLI, installed as ``medconvnext.cli``. Thin: parse, call the library, render."""
