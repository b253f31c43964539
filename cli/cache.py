"""``medconvnext cache``: inspect or empty the disk cache of preprocessed volumes."""

from __future__ import annotations

from pathlib import Path

import typer

from medconvnext.cli._common import console, run_guarded

cache_app = typer.Typer(rich_markup_mode=None, help="Inspect or clear the disk cache (data.cache=disk).",
                        no_args_is_help=True)

DIR_HELP = "Cache folder (default: $MEDCONVNEXT_CACHE_DIR or ~/.cache/medconvnext)."


@cache_app.command("info")
def info(cache_dir: Path = typer.Option(None, "--cache-dir", help=DIR_HELP)) -> None:
    """Print the cache folder, its number of entries and their size, and the memo files kept beside them."""

    def work() -> None:
        from medconvnext.data.cache import cache_info

        stats = cache_info(cache_dir)
        console.print(f"{stats['path']}: {stats['entries']} entries, {stats['bytes'] / 2**20:.1f} MiB; "
                      f"{stats['memos']} memo files, {stats['memo_bytes'] / 2**20:.1f} MiB (cache clear --memos)",
                      highlight=False)

    run_guarded(work)


@cache_app.command("clear", short_help="Delete every cached entry (rebuilt when next needed).")
def clear(cache_dir: Path = typer.Option(None, "--cache-dir", help=DIR_HELP),
          memos: bool = typer.Option(False, "--memos/--no-memos",
                                     help="Also delete the memos kept by file content (validation checks, "
                                          "file digests, voxel hashes, the plan's foreground scan) in the same "
                                          "folder.")) -> None:
    """Delete every cached entry (they are rebuilt on the next run that needs them)."""

    def work() -> None:
        from medconvnext.data.cache import clear_cache, clear_memos

        console.print(f"removed {clear_cache(cache_dir)} entries")
        if memos:
            console.print(f"removed {clear_memos(cache_dir)} memo files")

    run_guarded(work)
