"""Small data-flow helpers over a script's AST: import aliases, where a name was assigned, what an
expression depends on. Shared by static checks; approximate by design (one file, no types)."""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from convcheck.static.context import StaticContext, dotted_name

#: Names and attributes that carry the number of processes of a run.
WORLD_SIZE_NAMES = frozenset({
    "world_size", "worldsize", "world", "num_replicas", "nprocs", "nproc", "nproc_per_node", "ngpus", "n_gpus",
    "num_gpus", "gpus", "num_processes", "n_procs", "num_devices", "n_devices", "ndev", "dp_size",
    "data_parallel_size", "num_workers_total", "global_world_size",
})
#: Functions whose result is the number of processes (or devices used as one process each).
WORLD_SIZE_CALLS = frozenset({"get_world_size", "device_count", "world_size", "num_processes"})
#: Environment variables that carry it.
WORLD_SIZE_ENV = frozenset({"WORLD_SIZE", "LOCAL_WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"})


def import_aliases(tree: ast.AST) -> dict[str, str]:
    """Local name → full dotted name, from every import in the file (``DDP`` → ``torch.nn.parallel.DistributedDataParallel``)."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    aliases.setdefault(top, top)
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return aliases


def resolve(name: str | None, aliases: dict[str, str]) -> str | None:
    """``name`` with its first segment expanded through the imports."""
    if not name:
        return name
    head, _, rest = name.partition(".")
    full = aliases.get(head, head)
    return f"{full}.{rest}" if rest else full


def resolved_call(call: ast.Call, aliases: dict[str, str]) -> str | None:
    """The full dotted name of what ``call`` calls, through import aliases."""
    return resolve(dotted_name(call.func), aliases)


def last_segment(name: str | None) -> str:
    return (name or "").rsplit(".", 1)[-1]


@dataclass
class Flow:
    """Assignments (with their lines), function definitions and parameters of one script."""

    ctx: StaticContext
    aliases: dict[str, str] = field(init=False)
    assigned: dict[str, list[tuple[int, ast.AST]]] = field(init=False)
    functions: dict[str, ast.AST] = field(init=False)
    parameters: set[str] = field(init=False)

    def __post_init__(self) -> None:
        tree = self.ctx.tree
        self.aliases = import_aliases(tree)
        self.assigned = {}
        self.functions = {}
        self.parameters = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if node.value is None:
                    continue
                for target in targets:
                    for name, value in _bind(target, node.value):
                        self.assigned.setdefault(name, []).append((node.lineno, value))
                        if isinstance(node, ast.AugAssign):
                            # x *= k: x now depends on k and on its earlier value (kept by the other entries).
                            pass
            elif isinstance(node, ast.NamedExpr):
                self.assigned.setdefault(node.target.id, []).append((node.lineno, node.value))
            elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
                for name, value in _bind(node.target, node.iter):
                    self.assigned.setdefault(name, []).append((getattr(node, "lineno", 0), value))
            elif isinstance(node, (ast.With, ast.AsyncWith)):
                for item in node.items:
                    if item.optional_vars is not None:
                        for name, value in _bind(item.optional_vars, item.context_expr):
                            self.assigned.setdefault(name, []).append((node.lineno, value))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                if not isinstance(node, ast.Lambda):
                    self.functions[node.name] = node
                args = node.args
                for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
                    if arg is not None:
                        self.parameters.add(arg.arg)
        self._bind_call_arguments()

    def _bind_call_arguments(self) -> None:
        """A parameter of a function defined here depends on what its callers pass (``mp.spawn`` included)."""
        for call in (n for n in ast.walk(self.ctx.tree) if isinstance(n, ast.Call)):
            callee = dotted_name(call.func)
            given: list[ast.AST] = list(call.args)
            keywords = {kw.arg: kw.value for kw in call.keywords if kw.arg}
            if last_segment(callee) in ("spawn", "start_processes") and call.args:
                # mp.spawn(fn, args=(a, b)) calls fn(rank, a, b).
                callee = dotted_name(call.args[0])
                spawn_args = keywords.get("args", call.args[1] if len(call.args) > 1 else None)
                given = [ast.Constant(value=0), *(spawn_args.elts if isinstance(spawn_args, ast.Tuple) else [])]
                keywords = {}
            function = self.functions.get(last_segment(callee)) if callee else None
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            params = [a.arg for a in [*function.args.posonlyargs, *function.args.args]]
            if params and params[0] == "self" and "." in (callee or ""):
                params = params[1:]
            for name, value in zip(params, given):
                if not isinstance(value, ast.Starred):
                    self.assigned.setdefault(name, []).append((call.lineno, value))
            for name, value in keywords.items():
                if name in params or any(a.arg == name for a in function.args.kwonlyargs):
                    self.assigned.setdefault(name, []).append((call.lineno, value))

    def values_of(self, name: str, before: int | None = None) -> list[tuple[int, ast.AST]]:
        """What was assigned to ``name`` (dotted), optionally only on lines before ``before``."""
        found = self.assigned.get(name, [])
        if before is not None:
            earlier = [(line, value) for line, value in found if line < before]
            return earlier or found
        return found

    def depends_on(self, expr: ast.AST, is_source: Callable[[ast.AST], bool], limit: int = 400) -> bool:
        """Whether ``expr`` reads anything ``is_source`` accepts, following assignments and local functions."""
        seen: set[str] = set()
        todo: list[ast.AST] = [expr]
        budget = limit
        while todo and budget > 0:
            budget -= 1
            node = todo.pop()
            for sub in ast.walk(node):
                if is_source(sub):
                    return True
                name = dotted_name(sub) if isinstance(sub, (ast.Name, ast.Attribute)) else None
                if name is None or name in seen:
                    continue
                seen.add(name)
                for candidate in _prefixes(name):
                    for _, value in self.assigned.get(candidate, []):
                        todo.append(value)
                    function = self.functions.get(candidate)
                    if function is not None:
                        todo.append(function)
        return False

    def unresolved_names(self, expr: ast.AST) -> list[str]:
        """Plain names in ``expr`` (followed through assignments) that are function parameters only."""
        found: list[str] = []
        seen: set[str] = set()
        todo = [expr]
        while todo:
            node = todo.pop()
            for sub in ast.walk(node):
                if isinstance(sub, ast.Name) and sub.id not in seen:
                    seen.add(sub.id)
                    values = self.assigned.get(sub.id, [])
                    if values:
                        todo.extend(value for _, value in values)
                    elif sub.id in self.parameters and sub.id not in self.functions:
                        found.append(sub.id)
        return found


def _bind(target: ast.AST, value: ast.AST) -> Iterator[tuple[str, ast.AST]]:
    """(name, value) pairs a target binds; tuple targets pair up element-wise when they can."""
    if isinstance(target, (ast.Tuple, ast.List)):
        if isinstance(value, (ast.Tuple, ast.List)) and len(value.elts) == len(target.elts):
            for sub_target, sub_value in zip(target.elts, value.elts):
                yield from _bind(sub_target, sub_value)
        else:
            for sub_target in target.elts:
                yield from _bind(sub_target, value)
        return
    if isinstance(target, ast.Starred):
        yield from _bind(target.value, value)
        return
    name = dotted_name(target)
    if name:
        yield name, value


def _prefixes(name: str) -> list[str]:
    """``a.b.c`` → ``a.b.c``, ``a.b``, ``a``: an attribute depends on the object it was read from."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


def is_world_size_source(node: ast.AST) -> bool:
    """A name, attribute, call or environment lookup that gives the number of processes."""
    if isinstance(node, ast.Name):
        return node.id.lower() in WORLD_SIZE_NAMES
    if isinstance(node, ast.Attribute):
        return node.attr.lower() in WORLD_SIZE_NAMES
    if isinstance(node, ast.Call):
        return last_segment(dotted_name(node.func)) in WORLD_SIZE_CALLS
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value in WORLD_SIZE_ENV
    return False


def keyword(call: ast.Call, name: str) -> ast.AST | None:
    """The value of keyword ``name`` in ``call``."""
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def argument(call: ast.Call, position: int, name: str) -> ast.AST | None:
    """The argument given by keyword ``name`` or at ``position``."""
    found = keyword(call, name)
    if found is not None:
        return found
    positional = [a for a in call.args if not isinstance(a, ast.Starred)]
    return positional[position] if len(positional) > position else None


def is_false(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def mentions_attribute_call(ctx: StaticContext, attr: str) -> list[ast.Call]:
    """Every call of a method named ``attr`` (``x.set_epoch(...)``, ``a.b.set_epoch(...)``)."""
    return [c for c in ctx.calls() if isinstance(c.func, ast.Attribute) and c.func.attr == attr]


def same_file(path: str, ctx: StaticContext) -> bool:
    """Whether a trace's file path is the script itself."""
    from pathlib import Path

    try:
        return Path(path).resolve() == Path(ctx.path).resolve()
    except OSError:
        return False


def user_location(loc: list | tuple | None, ctx: StaticContext) -> tuple[str, int | None] | None:
    """A trace ``loc`` ([file, line]) as a finding location; the script is named as the static pass names it."""
    if not loc:
        return None
    path, line = loc[0], loc[1] if len(loc) > 1 else None
    if same_file(str(path), ctx):
        return ctx.display_path, line
    return str(path), line
