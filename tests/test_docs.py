"""The documentation a newcomer walks: README.md (a quick start) and docs/*.md (the reference by topic).

Checks what can drift silently: the two set-up commands at the very top, `.ci/run` running the README's test
command, every relative link and anchor, and every documented `medconvnext` command existing in the CLI."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
TEST_COMMAND = "ruff check . && python -m pytest -q"


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (word characters, spaces, hyphens kept)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())  # a link in a heading: its text
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    in_code = False
    for line in _text(path).splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not re.match(r"#{1,6} ", line):
            continue
        slug = _slug(line.lstrip("#"))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _without_code_blocks(text: str) -> str:
    return re.sub(r"```.*?```", "", text, flags=re.S)


def test_readme_starts_with_the_two_setup_commands_and_ci_runs_the_same_tests():
    blocks = re.findall(r"```bash\n(.*?)\n```", _text(README), flags=re.S)
    setup, tests = blocks[0], blocks[1]
    assert setup.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && "
                            "pip install -e . && medconvnext train --data sample_data/lesions --out runs/lesions")
    assert "medconvnext predict sample_data/lesions/images/case_000.nii.gz --model runs/lesions" in setup
    assert tests.endswith('pip install -e ".[dev]" && ' + TEST_COMMAND)
    ci = [line.strip() for line in _text(ROOT / ".ci" / "run").splitlines() if line.strip()]
    assert " && ".join(ci[-2:]) == TEST_COMMAND


def test_every_relative_link_and_anchor_resolves():
    broken = []
    for page in [README, *DOCS]:
        for target in re.findall(r"\]\(([^)\s]+)\)", _without_code_blocks(_text(page))):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_every_documented_command_exists():
    from typer.main import get_command

    from medconvnext.cli.main import app

    cli = get_command(app)
    documented = set()
    for page in [README, *DOCS]:
        text = _text(page)
        code = re.findall(r"```.*?```", text, flags=re.S) + [
            span for span in re.findall(r"`[^`\n]+`", _without_code_blocks(text))
            if not re.match(r"`(error|warning|interrupted):", span)  # a quoted message, not a command
        ]
        for words in re.findall(r"(?<![\w/.-])medconvnext ([a-z][a-z-]*(?: [a-z][a-z-]*)?)", "\n".join(code)):
            documented.add(tuple(words.split()))
    missing = []
    for words in documented:
        group = cli.commands.get(words[0])  # type: ignore[attr-defined]
        if group is None:
            missing.append(" ".join(words))
        elif len(words) == 2 and hasattr(group, "commands") and words[1] not in group.commands:
            missing.append(" ".join(words))
    assert not missing, sorted(missing)


def test_the_python_api_page_imports():
    """docs/api.md's imports name what the library exports (a renamed function must rename its documentation)."""
    import importlib

    code = "\n".join(re.findall(r"```python\n(.*?)\n```", _text(ROOT / "docs" / "api.md"), flags=re.S))
    imports = re.findall(r"^from (medconvnext[\w.]*) import ([\w, ]+)", code, flags=re.M)
    assert imports
    for module, names in imports:
        loaded = importlib.import_module(module)
        for name in names.split(","):
            assert hasattr(loaded, name.strip()), f"docs/api.md: {module}.{name.strip()} does not exist"


def test_every_documented_model_name_exists():
    from medconvnext.models import list_models

    known = set(list_models())
    pattern = r"`((?:convnext|convmixer|resnext|monai)_[a-z0-9_]+)`"
    pages = [README, *(page for page in DOCS if page.name != "benchmarks.md")]  # benchmarks.md names result rows
    documented = {name for page in pages for name in re.findall(pattern, _text(page))}
    assert documented and not documented - known, sorted(documented - known)
