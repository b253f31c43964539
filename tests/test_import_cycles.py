"""The shape of the package: no import circle between the modules of ``medconvnext/`` (every import is read
from the source with ast, those inside functions included: a function-level import hides a circle from Python,
not from a reader), and no module over 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import medconvnext

PACKAGE = Path(medconvnext.__file__).parent


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package is its ``__init__.py``)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imported(node: ast.AST, here: str, is_package: bool, modules: dict[str, Path]) -> list[str]:
    """The package's modules one import statement names (``from a import b`` names ``a.b`` when it is a module)."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: from the module's package, one level up per extra dot
            package = here.split(".") if is_package else here.split(".")[:-1]
            base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
        targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    else:
        return []
    names = []
    for target in targets:
        while target and target not in modules:  # `import a.b.c` of a name inside a module: the module
            target = target.rpartition(".")[0]
        if target:
            names.append(target)
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its source (itself left out)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        is_package = path.name == "__init__.py"
        graph[name] = {t for node in ast.walk(tree) for t in _imported(node, name, is_package, modules)} - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (its modules, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = 1, path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node], _ = 2, path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_function_level_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    source = "import os\n\ndef f():\n    from medconvnext.data.io import read_voxels\n"
    modules = _modules()
    found = {t for node in ast.walk(ast.parse(source)) for t in _imported(node, "medconvnext.x", False, modules)}
    assert found == {"medconvnext.data.io"}


def test_no_import_circle_in_medconvnext():
    graph = import_graph()
    assert "medconvnext.data.dicom" in graph["medconvnext.data.io"]  # the graph holds the package's imports
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_no_module_over_400_lines():
    """A module holds one idea; past 400 lines it usually holds two (split it by idea, not by size)."""
    long = {name: n for name, path in _modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > 400}
    assert not long, long
