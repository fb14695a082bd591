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


def first_tensor(value: Any) -> Any:
    """The first tensor in ``value`` (a tensor, or nested tuples, lists and dicts), or None."""
    if hasattr(value, "is_floating_point"):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            found = first_tensor(item)
            if found is not None:
                return found
    if isinstance(value, dict):
        for item in value.values():
            found = first_tensor(item)
            if found is not None:
                return found
    return None
