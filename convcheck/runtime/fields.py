"""Small value helpers every recorder uses to write event fields."""

from __future__ import annotations

from typing import Any

from convcheck.runtime.locate import user_location


def loc(depth: int = 3) -> list[Any] | None:
    """``[file, line]`` of the user's code that made the current call, or None."""
    found = user_location(depth)
    return [found[0], found[1]] if found else None


def num(value: Any) -> Any:
    """A JSON-safe number for ``value`` (a tensor or numpy scalar becomes a float), else a short repr."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return repr(value)[:80]
