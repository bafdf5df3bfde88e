"""fedtune's modules import each other without a cycle.

Every ``import`` in every module under ``fedtune/`` counts, module-level and function-local
alike: a function-local import hides a cycle from Python's import machinery, not from the
design. Importing a package counts as importing its ``__init__``; ``from pkg import name``
counts as importing ``pkg.name`` when that is a module, else ``pkg``'s ``__init__``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fedtune"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(current: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _target(name: str, modules: dict[str, Path]) -> str | None:
    """The fedtune module ``name`` refers to: itself, else its nearest enclosing module."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    """fedtune module -> the fedtune modules it imports (anywhere in its body)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(name, is_package, node)
                # `from pkg import sub` imports pkg's __init__ and then the submodule pkg.sub
                targets = [source] + [f"{source}.{alias.name}" for alias in node.names]
            for target in targets:
                found = _target(target, modules) if target.split(".")[0] == "fedtune" else None
                if found is not None and found != name:
                    graph[name].add(found)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None if it is acyclic."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph, white)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = grey
        stack.append(node)
        for nxt in sorted(graph[node]):
            if colour[nxt] == grey:
                return stack[stack.index(nxt):] + [nxt]
            if colour[nxt] == white and (cycle := visit(nxt)) is not None:
                return cycle
        stack.pop()
        colour[node] = black
        return None

    for start in sorted(graph):
        if colour[start] == white and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_the_walk_sees_every_module_and_its_imports():
    graph = import_graph()

    # a recursive walk: the subpackages' modules are in it, not only the top level
    assert len(graph) == len(list(PACKAGE.rglob("*.py"))) and len(graph) > 70
    # a module-level import, a function-local one, and a package import resolved to its __init__
    assert "fedtune.server.rounds" in graph["fedtune.server.strategy"]
    assert "fedtune.wire" in graph["fedtune.server.rounds"]
    assert {"fedtune.privacy", "fedtune.privacy.dp"} <= graph["fedtune.server.secagg"]


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_fedtune_imports_have_no_cycle():
    cycle = find_cycle(import_graph())

    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
