"""No module of convcheck imports, directly or through others, a module that imports it back.

A cycle hidden in a function-level import still couples the two modules (and breaks as soon
as one of the imports moves to module level), so every import statement counts, wherever it
is. Only ``if TYPE_CHECKING:`` blocks are left out: they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

from cc_testing import REPO

# The source folders and the package name each is installed as (see pyproject.toml).
ROOTS = {REPO / "convcheck": "convcheck", REPO / "checks": "convcheck.checks"}


def module_files() -> dict[str, Path]:
    """Every module of the installed package, by dotted name."""
    found: dict[str, Path] = {}
    for root, package in ROOTS.items():
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: module level, in functions and classes, not in TYPE_CHECKING."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module → the convcheck modules its import statements name."""
    files = module_files()
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
                continue
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # ``from pkg import sub`` imports the submodule; ``from mod import name`` the module.
            subs = {f"{base}.{alias.name}" for alias in node.names} & files.keys()
            edges.update(subs or {base})
        graph[name] = {target for target in edges if target in files and target != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None when the graph has none."""
    done: set[str] = set()
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> list[str] | None:
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target in on_stack:
                return stack[stack.index(target):] + [target]
            if target not in done:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        on_stack.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle for each group of modules that reach each other: every tangle, not only the first."""
    cycles = []
    seen: set[str] = set()
    for node in sorted(graph):
        if node in seen:
            continue
        reach = _reachable(graph, node)
        group = {other for other in reach if node in _reachable(graph, other)}
        seen |= group | {node}
        if node in reach:
            cycle = find_cycle({n: graph[n] & group for n in group})
            assert cycle is not None
            cycles.append(cycle)
    return cycles


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    found: set[str] = set()
    todo = list(graph.get(start, ()))
    while todo:
        node = todo.pop()
        if node not in found:
            found.add(node)
            todo.extend(graph.get(node, ()))
    return found


def test_the_graph_sees_module_and_function_level_imports() -> None:
    graph = import_graph()
    # Module level: the checks' own package lists every check.
    assert "convcheck.checks.cc001_state_dict_prefix" in graph["convcheck.checks"]
    # Function level: the runner imports the analysis only when it diagnoses.
    assert "convcheck.analysis" in graph["convcheck.runner"]
    # ``from package import module`` names the module; ``from module import name`` the module.
    assert {"convcheck.runtime.env", "convcheck.runtime.fsguard"} <= graph["convcheck.runtime.probe"]
    assert "convcheck.statedict" in graph["convcheck.checks.cc001_state_dict_prefix"]
    # Imports for type checkers never run.
    assert "convcheck.registry" not in graph["convcheck.analysis"]


def test_find_cycles_reports_each_tangle_in_import_order() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    # Two separate cycles, and a module that only leads into one of them.
    graph = {"a": {"b"}, "b": {"a", "c"}, "c": set(), "x": {"y"}, "y": {"z"}, "z": {"x"}, "w": {"x"}}
    assert find_cycles(graph) == [["a", "b", "a"], ["x", "y", "z", "x"]]


def test_no_import_cycle_among_convcheck_modules() -> None:
    cycles = find_cycles(import_graph())
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)
