"""What every command shares: the console, error handling and exit codes.

Exit codes: 0 ok; 1 unexpected failure; 2 user error (one line naming the file or field).
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from typing import TypeVar

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

T = TypeVar("T")


class State:
    """Global options set by the app callback."""

    debug: bool = False


def run_guarded(fn: Callable[[], T]) -> T:
    """Call ``fn``; turn a UserError into exit 2 and anything else into exit 1, one line each.

    With ``--debug`` the traceback is printed too.
    """
    from medconvnext.errors import UserError

    try:
        return fn()
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/red]")
        raise typer.Exit(130) from None
    except UserError as exc:
        _print_error(str(exc))
        raise typer.Exit(2) from None
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        _print_error(f"unexpected failure: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)")
        raise typer.Exit(1) from None


def _print_error(message: str) -> None:
    if State.debug:
        traceback.print_exc(file=sys.stderr)
    err_console.print(f"[bold red]error:[/bold red] {message}", highlight=False, soft_wrap=True)
