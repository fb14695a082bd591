"""Small value helpers every recorder uses to write event fields."""

from __future__ import annotations

from typing import Any

from convcheck.runtime.locate import event_location

#: ``[file, line]`` of the user's code that made the current call, or None.
loc = event_location


def num(value: Any) -> Any:
    """A JSON-safe number for ``value`` (a tensor or numpy scalar becomes a float), else a short repr."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return repr(value)[:80]
