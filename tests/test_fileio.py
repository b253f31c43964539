"""Atomic writes: the final name holds either the old or the new content, and no temporary file is left."""

from __future__ import annotations

import json
import os

import pytest

from medconvnext.fileio import atomic_write, write_json_cache


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old", encoding="utf-8")

    def broken(tmp):
        tmp.write_text("half", encoding="utf-8")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert path.read_text(encoding="utf-8") == "old" and sorted(os.listdir(tmp_path)) == ["state.json"]
    atomic_write(path, lambda tmp: tmp.write_text("new", encoding="utf-8"))
    assert path.read_text(encoding="utf-8") == "new" and sorted(os.listdir(tmp_path)) == ["state.json"]


def test_a_cache_that_cannot_be_written_is_skipped_silently(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x", encoding="utf-8")
    write_json_cache(blocker / "memo.json", {"a": 1})  # the folder cannot exist: OSError, ignored
    assert blocker.read_text(encoding="utf-8") == "x"


def test_write_json_cache_round_trip(tmp_path):
    write_json_cache(tmp_path / "sub" / "memo.json", {"a": [1, 2]})
    assert json.loads((tmp_path / "sub" / "memo.json").read_text(encoding="utf-8")) == {"a": [1, 2]}


def test_atomic_write_gives_the_file_the_usual_mode(tmp_path):
    """mkstemp's 0600 must not reach the result: a prediction table in a shared folder is readable as the umask
    allows, like a file written with open()."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "table.csv", lambda tmp: tmp.write_text("a\n", encoding="utf-8"))
        (tmp_path / "plain.csv").write_text("a\n", encoding="utf-8")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "table.csv").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.csv").stat().st_mode) == 0o644
