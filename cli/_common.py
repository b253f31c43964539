"""What every command shares: the console, error handling and exit codes.

Exit codes: 0 ok; 1 unexpected failure; 2 user error (one line naming the file or field).
"""

from __future__ import annotations

import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from rich.table import Table

class _Console(Console):
    """rich's console, wrapping lines in a terminal only: into a pipe or file a line stays one line (a path cut
    at column 80 breaks grep and copy-paste). Decided at each print, as the output may be redirected later."""

    @property  # type: ignore[override]
    def soft_wrap(self) -> bool:
        return not self.is_terminal

    @soft_wrap.setter
    def soft_wrap(self, _value: bool) -> None:  # rich's __init__ assigns it; the property decides
        pass


console = _Console()
err_console = Console(stderr=True)


def print_table(table: Table) -> None:
    """Print a table; into a pipe or file (no terminal width to fit) at its full width, so no column is cut."""
    print_wide(table)


def print_wide(renderable: Any, on: Console | None = None, min_width: int = 0) -> None:
    """Print a table or panel on ``on`` (default: the console); into a pipe or file at its natural width (at least
    ``min_width``), as there is no terminal to fit and rich would cut it at 80 columns."""
    target = on or console
    if target.is_terminal:
        target.print(renderable)
        return
    natural = target.measure(renderable, options=target.options.update(max_width=1000)).maximum
    Console(file=target.file, width=max(target.width, natural, min_width)).print(renderable)


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
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
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
    # escaped: a message may hold brackets (``pip install medconvnext[onnx]``, a path) that rich reads as markup
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)


# the library's and the CLI's folders (the same folder once installed; two in an editable install)
_PACKAGE_DIRS = tuple({str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "medconvnext"),
                       str(Path(sys.modules["medconvnext"].__file__).resolve().parent)})
_default_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """The library's own warnings (e.g. the leakage audit) as one line ``warning: ...``; others as usual.

    A reader's warning carries what the imaging library printed (``raw``): shown under ``--debug`` only.
    """
    if str(Path(filename).resolve()).startswith(_PACKAGE_DIRS):
        err_console.print(f"[bold yellow]warning:[/bold yellow] {escape(str(message))}", highlight=False,
                          soft_wrap=True)
        if State.debug and getattr(message, "raw", ""):
            err_console.print(escape(message.raw), highlight=False, soft_wrap=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)
