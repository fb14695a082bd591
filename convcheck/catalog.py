"""Which checks exist: the built-in list, third-party entry points, lookup by code or name, and selection."""

from __future__ import annotations

import inspect
from importlib.metadata import entry_points
from typing import Any

from convcheck.registry import Check

ENTRY_POINT_GROUP = "convcheck.checks"


class SelectionError(ValueError):
    """--select/--ignore named a check that does not exist."""


def builtin_checks() -> list[type[Check]]:
    """The checks shipped with convcheck, in code order."""
    from convcheck.checks import ALL

    return list(ALL)


def third_party_checks() -> list[type[Check]]:
    """Checks other packages register under the ``convcheck.checks`` entry-point group."""
    found = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        if inspect.isclass(obj) and issubclass(obj, Check):
            found.append(obj)
    return found


def all_checks() -> list[type[Check]]:
    """Every available check, built-in first."""
    return builtin_checks() + third_party_checks()


def find_check(code_or_name: str) -> type[Check] | None:
    """The check with this code (any case) or name."""
    wanted = code_or_name.strip().lower()
    for check in all_checks():
        if wanted in (check.code.lower(), check.name.lower()):
            return check
    return None


def select_checks(
    select: list[str], ignore: list[str], options: dict[str, dict[str, Any]] | None = None
) -> list[Check]:
    """Instances of the checks left after --select and --ignore; unknown codes are an error.

    ``options`` maps a code or name to that check's settings (``[tool.convcheck.checks.CODE]``),
    given to the instance as ``check.options``.
    """
    checks = all_checks()

    def resolve(items: list[str]) -> set[str]:
        codes = set()
        for item in items:
            match = find_check(item)
            if match is None:
                known = ", ".join(f"{c.code} ({c.name})" for c in checks)
                raise SelectionError(f"Unknown check {item!r}. Known checks: {known}.")
            codes.add(match.code)
        return codes

    selected = resolve(select) if select else {c.code for c in checks}
    ignored = resolve(ignore)
    by_code = {}
    for key, value in (options or {}).items():
        match = find_check(key)
        if match is None:
            raise SelectionError(f"[tool.convcheck.checks] names an unknown check {key!r}.")
        by_code[match.code] = dict(value)
    instances = []
    for cls in checks:
        if cls.code in selected and cls.code not in ignored:
            check = cls()
            check.options = by_code.get(cls.code, {})
            instances.append(check)
    return instances
