"""Shortened epochs without being asked: a short run reaches the script's own epoch boundaries.

Many bugs show only from the second epoch on (validation that leaves the model in eval mode, a backbone
unfrozen after the optimizer was built, a sampler never told the epoch). With a step budget of 20 and an
epoch of hundreds of batches the run never gets there. When the user gives no ``--max-batches-per-epoch``,
an epoch of a *training* loop ends after a few optimizer steps, but only where that cannot change what the
script does otherwise:

- a step was taken during this pass over the loader; a validation pass takes none, and ends after as many
  batches as the shortened training pass only when its batches are drawn under ``torch.no_grad()`` from a
  loader that never fed a step (``Probe._evaluation_cut``);
- the loader is pulled by a ``for`` statement (directly or through ``enumerate``/``zip``/a generator such as
  tqdm), never by an explicit ``next()``, which would get a StopIteration it does not expect;
- that ``for`` statement sits inside another loop, in its own function or in a caller up to a few user
  frames above it, so the script goes on to its next epoch instead of ending its training early.
"""

from __future__ import annotations

import ast
import dis
import inspect
from dataclasses import dataclass
from types import FrameType

from convcheck.runtime.locate import _is_convcheck_file, is_library_file, is_torch_file

_FOR_ITER = dis.opmap["FOR_ITER"]
#: User frames above the ``for`` statement searched for the loop that repeats it (helpers one or two deep).
_CALLER_DEPTH = 3
#: Library generator frames (tqdm, a prefetcher) allowed between the loader and the user's ``for``.
_WRAPPER_DEPTH = 4
#: Passes over a loader that end early: three epoch boundaries within the budget, then full epochs.
SHORTENED_PASSES = 3
_trees: dict[str, ast.AST | None] = {}


def steps_per_epoch(budget: int) -> int:
    """Optimizer steps an automatically shortened epoch lasts: three epoch boundaries within the budget."""
    return max(1, budget // 3)


@dataclass(frozen=True)
class LoopSite:
    """The user's ``for`` statement that pulls a loader, inside a loop that runs it again."""

    file: str
    line: int
    #: How many times the enclosing loop runs, where the source says (``range(4)``); None when unknown.
    passes: int | None


def shortened(site: LoopSite | None, epoch: int) -> bool:
    """Whether this pass (1-based) over the loader ends early: the first three, never the last known one.

    Later epochs run in full, so a script with few epochs still reaches the step budget.
    """
    return site is not None and epoch <= SHORTENED_PASSES and (site.passes is None or epoch < site.passes)


def repeating_for_loop(frame: FrameType | None) -> LoopSite | None:
    """The user's ``for`` statement pulling the loader from ``frame`` on, when a loop around it runs it again;
    None when the loader is pulled another way or its loop runs once."""
    frame = _skip_convcheck_and_torch(frame)
    for _ in range(_WRAPPER_DEPTH):
        if frame is None or not is_library_file(frame.f_code.co_filename):
            break
        # A library generator that re-yields the batches (tqdm): its consumer is the one that counts.
        if not (frame.f_code.co_flags & inspect.CO_GENERATOR) or not _at_for_iter(frame):
            return None
        frame = frame.f_back
    if frame is None or is_library_file(frame.f_code.co_filename) or not _at_for_iter(frame):
        return None
    found = (frame.f_code.co_filename, frame.f_lineno)
    statement = _for_header_at(frame)
    if statement is None:
        return None
    loop = _enclosing_loop(frame, statement)
    if loop is not None:
        return LoopSite(*found, _passes(loop))
    # The loop runs once in its function: a caller may run the function once per epoch.
    caller = frame.f_back
    for _ in range(_CALLER_DEPTH):
        if caller is None or is_library_file(caller.f_code.co_filename):
            return None
        statement = _statement_at(caller)
        if statement is None:
            return None
        loop = _enclosing_loop(caller, statement)
        if loop is not None:
            return LoopSite(*found, _passes(loop))
        caller = caller.f_back
    return None


def _skip_convcheck_and_torch(frame: FrameType | None) -> FrameType | None:
    while frame is not None and (_is_convcheck_file(frame.f_code.co_filename)
                                 or is_torch_file(frame.f_code.co_filename)):
        frame = frame.f_back
    return frame


def _at_for_iter(frame: FrameType) -> bool:
    code = frame.f_code.co_code
    return 0 <= frame.f_lasti < len(code) and code[frame.f_lasti] == _FOR_ITER


def _tree(filename: str) -> ast.AST | None:
    if filename not in _trees:
        try:
            with open(filename, encoding="utf-8") as fh:
                _trees[filename] = ast.parse(fh.read(), filename=filename)
        except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
            _trees[filename] = None
    return _trees[filename]


def _for_header_at(frame: FrameType) -> ast.AST | None:
    """The ``for`` statement whose header holds the frame's current line (the innermost one)."""
    tree = _tree(frame.f_code.co_filename)
    line = frame.f_lineno
    found = [node for node in ast.walk(tree) if isinstance(node, ast.For) and node.lineno <= line < node.body[0].lineno
             ] if tree is not None else []
    return max(found, key=lambda n: n.lineno, default=None)


def _statement_at(frame: FrameType) -> ast.AST | None:
    """The innermost statement that holds the frame's current line (a caller's call)."""
    tree = _tree(frame.f_code.co_filename)
    line = frame.f_lineno
    found = [node for node in ast.walk(tree) if isinstance(node, ast.stmt)
             and node.lineno <= line <= (node.end_lineno or node.lineno)] if tree is not None else []
    return min(found, key=lambda n: ((n.end_lineno or n.lineno) - n.lineno, -n.lineno), default=None)


def _enclosing_loop(frame: FrameType, statement: ast.AST) -> ast.AST | None:
    """The nearest for/while loop of the frame's own function (not a nested def) that holds ``statement`` and
    runs more than once."""
    tree = _tree(frame.f_code.co_filename)
    if tree is None:
        return None
    parents = _parents(tree)
    node = parents.get(statement)
    while node is not None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            return None
        if isinstance(node, (ast.For, ast.AsyncFor, ast.While)) and _passes(node) != 1:
            return node
        node = parents.get(node)
    return None


def _passes(loop: ast.AST) -> int | None:
    """How many times ``for _ in range(...)`` runs when its bounds are literal numbers; None otherwise."""
    call = getattr(loop, "iter", None)
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "range"):
        return None
    if call.keywords or not 1 <= len(call.args) <= 2:
        return None
    if not all(isinstance(a, ast.Constant) and type(a.value) is int for a in call.args):
        return None
    bounds = [a.value for a in call.args]
    return max(0, bounds[-1] - (bounds[0] if len(bounds) == 2 else 0))


_parent_maps: dict[int, dict[ast.AST, ast.AST]] = {}


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    found = _parent_maps.get(id(tree))
    if found is None:
        found = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        _parent_maps[id(tree)] = found
    return found


def reset_caches() -> None:
    """Forget parsed files (a file edited between two runs in one process)."""
    _trees.clear()
    _parent_maps.clear()

