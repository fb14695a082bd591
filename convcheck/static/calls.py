"""Calls into the script's own functions: what a helper does happens where the helper is called.

A training loop that calls ``evaluate(model, loader)`` or ``unfreeze(model)`` switches modes or unfreezes
parameters at that call, not at the helper's ``def``, which usually sits above everything else. Helpers
are module-level functions and methods of classes defined in the script (a method is matched by its name
when exactly one class of the script defines it); calls are followed up to ``MAX_DEPTH`` helpers out.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from convcheck.static.context import StaticContext

#: How many helpers out a statement is followed (a helper called by a helper called by ``main``).
MAX_DEPTH = 3


@dataclass(frozen=True)
class Where:
    """A line of the script and the chain of helper calls that reach it, outermost first."""

    line: int
    #: (helper name, line of the call that enters it), outermost first; empty at top level.
    calls: tuple[tuple[str, int], ...] = ()

    @property
    def order(self) -> tuple[int, ...]:
        """A key that sorts places in the order the script reaches them (call lines, then the line itself)."""
        return (*(line for _, line in self.calls), self.line)

    def describe(self) -> str:
        """``line 12 in `unfreeze()`, called at line 40``; just ``line 12`` outside helpers."""
        if not self.calls:
            return f"line {self.line}"
        name, call = self.calls[-1]
        return f"line {self.line} in `{name}()`, called at line {call}"


@dataclass
class Calls:
    """The script's own functions and the calls that enter them."""

    ctx: StaticContext
    parents: dict[ast.AST, ast.AST] = field(init=False)
    functions: dict[str, ast.AST] = field(init=False)
    callers: dict[ast.AST, list[ast.Call]] = field(init=False)

    def __post_init__(self) -> None:
        tree = self.ctx.tree
        self.parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        module_functions: dict[str, ast.AST] = {}
        methods: dict[str, list[ast.AST]] = {}
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                module_functions[node.name] = node
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        methods.setdefault(item.name, []).append(item)
        self.functions = dict(module_functions)
        self.callers = {}
        self.targets: dict[ast.Call, ast.AST] = {}
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            target = None
            if isinstance(call.func, ast.Name):
                target = module_functions.get(call.func.id)
            elif isinstance(call.func, ast.Attribute) and len(methods.get(call.func.attr, [])) == 1:
                target = methods[call.func.attr][0]
            if target is not None and not self._inside(call, target):
                self.callers.setdefault(target, []).append(call)
                self.targets[call] = target
        for found in self.callers.values():
            found.sort(key=lambda call: (call.lineno, call.col_offset))

    def _inside(self, node: ast.AST, function: ast.AST) -> bool:
        while node is not None:
            if node is function:
                return True
            node = self.parents.get(node)
        return False

    def helper_of(self, node: ast.AST) -> ast.AST | None:
        """The script's function (module-level or a method) whose body holds ``node``; None at top level."""
        node = self.parents.get(node)
        while node is not None:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                return node
            node = self.parents.get(node)
        return None

    def places(self, node: ast.AST, depth: int = MAX_DEPTH) -> list[Where]:
        """Every place ``node`` runs from: its own line reached through each chain of calls into its helpers."""
        return self._places(node, node.lineno, depth, frozenset())

    def _places(self, node: ast.AST, line: int, depth: int, seen: frozenset) -> list[Where]:
        function = self.helper_of(node)
        if function is None or depth == 0 or function in seen or not self.callers.get(function):
            return [Where(line)]
        found = []
        for call in self.callers[function]:
            for outer in self._places(call, call.lineno, depth - 1, seen | {function}):
                found.append(Where(line, (*outer.calls, (function.name, outer.line))))
        return found

    def reached(self, statements: list[ast.stmt], depth: int = MAX_DEPTH - 1) -> list[tuple[ast.Call, Where]]:
        """Every call that runs when ``statements`` run: their own, and those inside the script's functions
        they call, up to ``depth`` functions in; each with its place (the chain of calls into it)."""
        found: list[tuple[ast.Call, Where]] = []
        self._reach(statements, (), depth, set(), found)
        return found

    def _reach(self, nodes: list[ast.AST], chain: tuple, depth: int, seen: set, found: list) -> None:
        for root in nodes:
            for call in (n for n in ast.walk(root) if isinstance(n, ast.Call)):
                found.append((call, Where(call.lineno, chain)))
                target = self.targets.get(call)
                if target is not None and depth > 0 and target not in seen:
                    seen.add(target)
                    self._reach(target.body, (*chain, (target.name, call.lineno)), depth - 1, seen, found)

    def at_line(self, line: int) -> list[Where]:
        """The places of the statement on ``line`` (a location a run recorded), top level included."""
        statements = [n for n in ast.walk(self.ctx.tree) if isinstance(n, ast.stmt) and n.lineno == line]
        if not statements:
            return [Where(line)]
        return self.places(min(statements, key=lambda n: (n.end_lineno or n.lineno) - n.lineno))

