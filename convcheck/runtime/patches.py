"""Reversible monkey-patches: one registry, so every patch can be undone in one place."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Patches:
    """Replaces attributes with wrappers and remembers the originals."""

    def __init__(self) -> None:
        self._undo: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, name: str, make_wrapper: Callable[[Any], Any]) -> None:
        """Replace ``owner.name`` with ``make_wrapper(original)``; skip what does not exist."""
        original = getattr(owner, name, None)
        if original is None:
            return
        wrapper = make_wrapper(original)
        try:
            wrapper.__wrapped__ = original
        except (AttributeError, TypeError):
            pass
        setattr(owner, name, wrapper)
        self._undo.append((owner, name, original))

    def undo_all(self) -> None:
        """Restore every original, newest first."""
        while self._undo:
            owner, name, original = self._undo.pop()
            setattr(owner, name, original)
