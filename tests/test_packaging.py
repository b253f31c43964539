"""The wheel maps cli/ to medconvnext.cli and installs no top-level 'cli' package."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_every_library_package_is_listed_in_pyproject():
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"])
    found = {"medconvnext." + p.parent.relative_to(REPO / "medconvnext").as_posix().replace("/", ".")
             for p in (REPO / "medconvnext").rglob("__init__.py")}
    found = {name.rstrip(".") for name in found} | {"medconvnext", "medconvnext.cli"}
    found.discard("medconvnext..")
    assert found == listed


def test_wheel_has_no_top_level_cli(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
        + [str(REPO)],
        check=True,
    )
    (wheel,) = tmp_path.glob("medconvnext-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "medconvnext/cli/main.py" in names
    assert not [n for n in names if n.startswith("cli/")]
