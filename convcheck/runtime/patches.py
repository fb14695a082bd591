"""Reversible monkey-patches: one registry, so every patch can be undone in one place.

Every wrapper installed here is guarded: the user's call always runs, whatever happens
to convcheck's own bookkeeping around it. A wrapper that fails before it reached the
original call falls back to calling the original; one that fails after it returns the
original's result. Each such failure is reported once per patch to ``on_error``. While
torch.compile traces, wrappers and hooks step aside entirely: dynamo must never see them.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

from convcheck.runtime.importhook import after_import
from convcheck.runtime.typeslots import SEQUENCE_DUNDERS, empty_sequence_item, sequence_item_empty

ErrorSink = Callable[[str, BaseException], None]
#: Marks a patched attribute that the owner inherited rather than defined.
_INHERITED = object()


def _never() -> bool:
    return False


def compile_probe() -> Callable[[], bool]:
    """torch's "is torch.compile tracing now?" (dynamo folds it to a constant), resolved once, outside tracing."""
    torch = sys.modules.get("torch")
    compiler = getattr(torch, "compiler", None)
    return getattr(compiler, "is_compiling", None) or _never


def _eager(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` run outside dynamo's tracing: torch.compile breaks its graph around the call.

    ``torch.compiler.disable`` imports dynamo, about a second of CPU that a script which never
    compiles would not pay. Until the script imports dynamo itself, the call goes through a
    stand-in; the moment dynamo is imported, before it can trace anything, the stand-in starts
    calling the disabled function instead.
    """
    torch = sys.modules.get("torch")
    if getattr(torch, "compiler", None) is None or not hasattr(torch.compiler, "disable"):
        return function
    if "torch._dynamo" in sys.modules:
        return torch.compiler.disable(function)
    target = [function]

    def eager(*args: Any, **kwargs: Any) -> Any:
        return target[0](*args, **kwargs)

    def dynamo_imported(_module: Any) -> None:
        target[0] = torch.compiler.disable(function)

    after_import("torch._dynamo", dynamo_imported)
    return eager


class _Call:
    """One call of a guarded wrapper: whether its original started, finished, and with what."""

    __slots__ = ("started", "finished", "result")

    def __init__(self) -> None:
        self.started = False
        self.finished = False
        self.result: Any = None


class Patches:
    """Replaces attributes with guarded wrappers and remembers the originals."""

    def __init__(self, on_error: ErrorSink | None = None) -> None:
        self._undo: list[tuple[Any, str, Any]] = []
        self._empty_slots: set[Any] = set()
        self._calls = threading.local()
        self._reported: set[str] = set()
        self.on_error = on_error

    def report(self, label: str, exc: BaseException) -> None:
        """Tell ``on_error`` once per label that convcheck's own code failed there."""
        if label in self._reported or self.on_error is None:
            return
        self._reported.add(label)
        try:
            self.on_error(label, exc)
        except Exception:
            pass

    def _stack(self) -> list[_Call]:
        stack = getattr(self._calls, "stack", None)
        if stack is None:
            stack = self._calls.stack = []
        return stack

    def wrap(self, owner: Any, name: str, make_wrapper: Callable[[Any], Any],
             deliberate: tuple[type[BaseException], ...] = (), eager_under_compile: bool = False,
             when: Callable[..., bool] | None = None) -> None:
        """Replace ``owner.name`` with a guarded ``make_wrapper(original)``; skip what does not exist.

        ``deliberate``: exceptions the wrapper raises on purpose (a StopIteration that ends an
        epoch early, a clear error for an unmappable CUDA call); they reach the user's code.
        ``eager_under_compile``: inside a torch.compile'd function, run the wrapper eagerly (a graph
        break) instead of stepping aside: for calls whose absence from the trace would mislead a check.
        ``when``: a cheap test of the call's arguments (type checks only; it must not raise); calls it
        rejects go straight to the original, for patches on hot paths such as ``Tensor.__getitem__``.
        """
        original = getattr(owner, name, None)
        if original is None:
            return
        if name in SEQUENCE_DUNDERS:
            empty = sequence_item_empty(owner)
            if empty is None:
                return  # the slot it would fill could not be emptied again: leave the class alone
            if empty:
                self._empty_slots.add(owner)
        # An inherited attribute is deleted again on undo, so that lookups reach the base class as before.
        restore = original if name in getattr(owner, "__dict__", {}) else _INHERITED
        if isinstance(original, type):
            # A class must stay a class (annotations, isinstance, subclasses): its stand-in is installed as is.
            setattr(owner, name, make_wrapper(original))
            self._undo.append((owner, name, restore))
            return
        label = f"{getattr(owner, '__name__', type(owner).__name__)}.{name}"
        stack = self._stack
        compiling = compile_probe()

        def tracked(*args: Any, **kwargs: Any) -> Any:
            call = stack()[-1]
            call.started = True
            result = original(*args, **kwargs)
            call.finished, call.result = True, result
            return result

        wrapper = make_wrapper(tracked)
        patches = self

        def guarded(*args: Any, **kwargs: Any) -> Any:
            if compiling():
                return original(*args, **kwargs)
            calls = stack()
            call = _Call()
            calls.append(call)
            try:
                return wrapper(*args, **kwargs)
            except deliberate:
                raise
            except Exception as exc:
                if call.finished:
                    patches.report(label, exc)
                    return call.result
                if call.started:
                    raise  # the original itself raised: the user's own error
                patches.report(label, exc)
                return original(*args, **kwargs)
            finally:
                calls.pop()

        if when is not None:
            checked = guarded

            def prefiltered(*args: Any, **kwargs: Any) -> Any:
                try:
                    wanted = when(*args, **kwargs)
                except Exception as exc:
                    patches.report(label, exc)
                    wanted = False
                if not wanted:
                    return original(*args, **kwargs)
                return checked(*args, **kwargs)

            guarded = prefiltered

        if eager_under_compile:
            guarded = _eager(guarded)
        for attr in ("__name__", "__doc__"):
            try:
                setattr(guarded, attr, getattr(original, attr))
            except (AttributeError, TypeError):
                pass
        guarded.__wrapped__ = original  # type: ignore[attr-defined]
        setattr(owner, name, guarded)
        self._undo.append((owner, name, restore))
        self._keep_slots(owner, name)

    def hook(self, label: str, function: Callable[..., Any], eager_under_compile: bool = False) -> Callable[..., Any]:
        """A global hook that never raises into the user's code (but lets BaseExceptions such as StopRun through).

        Under torch.compile it steps aside, or with ``eager_under_compile`` runs eagerly (a graph break).
        """
        patches = self
        compiling = compile_probe()

        def guarded_hook(*args: Any) -> Any:
            if compiling():
                return None
            try:
                return function(*args)
            except Exception as exc:
                patches.report(label, exc)
                return None

        return _eager(guarded_hook) if eager_under_compile else guarded_hook

    def _keep_slots(self, owner: Any, name: str) -> None:
        """Empty again the sequence slot that setting or deleting ``name`` filled on a class that had none."""
        if name in SEQUENCE_DUNDERS and owner in self._empty_slots:
            empty_sequence_item(owner)

    def labels(self) -> list[str]:
        """``Owner.name`` of every patch in place, oldest first."""
        return [f"{getattr(owner, '__name__', type(owner).__name__)}.{name}" for owner, name, _ in self._undo]

    def undo_all(self) -> None:
        """Restore every original, newest first."""
        while self._undo:
            owner, name, original = self._undo.pop()
            if original is _INHERITED:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
            self._keep_slots(owner, name)
