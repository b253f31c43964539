"""What every command shares: the console, error handling and exit codes.

Exit codes: 0 ok; 1 unexpected failure; 2 user error (one line naming the file or field).
"""

from __future__ import annotations

import signal
import sys
import threading
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


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler ending the job), handled as Ctrl-C is: the run stops where it stands, resumable."""


def run_guarded(fn: Callable[[], T], on_interrupt: Callable[[], str | None] | None = None) -> T:
    """Call ``fn``; turn a UserError into exit 2 and anything else into exit 1, one line each.

    Ctrl-C (exit 130) and SIGTERM (exit 143) print ``interrupted`` and, when ``on_interrupt`` returns one, how to
    continue (e.g. ``medconvnext train --resume RUN``). With ``--debug`` the traceback is printed too.
    """
    from medconvnext.errors import UserError

    previous = _catch_sigterm()
    _Repeats.seen = {}
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return fn()
    except typer.Exit:
        raise
    except KeyboardInterrupt as exc:
        hint = on_interrupt() if on_interrupt is not None else None
        err_console.print("[red]interrupted[/red]" + (f": {escape(hint)}" if hint else ""), highlight=False,
                          soft_wrap=True)
        raise typer.Exit(143 if isinstance(exc, Terminated) else 130) from None
    except UserError as exc:
        _print_error(str(exc))
        raise typer.Exit(2) from None
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        _print_error(f"unexpected failure: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)")
        raise typer.Exit(1) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        _print_repeats()


def _catch_sigterm() -> Any:
    """Make SIGTERM raise :class:`Terminated` (so ``finally`` blocks release the run's lock and the message says how
    to continue); returns the previous handler, or None outside the main thread (where signals cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    return signal.signal(signal.SIGTERM, handler)


def resume_hint(out: Path | None, command: str) -> Callable[[], str | None]:
    """``on_interrupt`` for a command writing the run ``out``: ``continue with `COMMAND OUT` `` once the run has
    started (its manifest says running), else nothing (interrupted before any file was written)."""

    def hint() -> str | None:
        from medconvnext.fileio import read_manifest

        manifest = read_manifest(out) if out is not None else None
        if manifest is None or manifest.get("state") != "running":
            return None
        return f"continue with `{command} {out}`"

    return hint


def _print_error(message: str) -> None:
    if State.debug:
        traceback.print_exc(file=sys.stderr)
    # escaped: a message may hold brackets (``pip install medconvnext[onnx]``, a path) that rich reads as markup
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)


# the library's and the CLI's folders (the same folder once installed; two in an editable install)
_PACKAGE_DIRS = tuple({str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "medconvnext"),
                       str(Path(sys.modules["medconvnext"].__file__).resolve().parent)})
_default_showwarning = warnings.showwarning
class _Repeats:
    """The library's warnings of the running command -> how often each was given (None outside a command)."""

    seen: dict[str, int] | None = None


def _print_repeats() -> None:
    """One line per warning given more than once (it was shown the first time only)."""
    for text, count in (_Repeats.seen or {}).items():
        if count > 1:
            short = text if len(text) <= 80 else text[:77] + "..."
            err_console.print(f"[bold yellow]warning:[/bold yellow] {escape(short)} (given {count} times, shown once)",
                              highlight=False, soft_wrap=True)
    _Repeats.seen = None


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """The library's own warnings (e.g. the leakage audit) as one line ``warning: ...``; others as usual.

    A reader's warning carries what the imaging library printed (``raw``): shown under ``--debug`` only.
    """
    if str(Path(filename).resolve()).startswith(_PACKAGE_DIRS):
        text = str(message)
        seen = _Repeats.seen
        if seen is not None:  # within a command: the same warning for every scan or fold is shown once, counted
            seen[text] = seen.get(text, 0) + 1
            if seen[text] > 1:
                return
        err_console.print(f"[bold yellow]warning:[/bold yellow] {escape(text)}", highlight=False, soft_wrap=True)
        if State.debug and getattr(message, "raw", ""):
            err_console.print(escape(message.raw), highlight=False, soft_wrap=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)
