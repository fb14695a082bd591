"""Static checks on inline snippets: ``# expect: CC004 warning`` marks the line a finding must point at."""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

from convcheck.static.context import StaticContext

_EXPECT = re.compile(r"#\s*expect:\s*(CC\d{3})\s+(error|warning|info)\b")


def context(source: str, path: str = "train.py") -> StaticContext:
    """A StaticContext for a snippet (dedented)."""
    source = textwrap.dedent(source)
    return StaticContext(path=Path(path), source=source, tree=ast.parse(source))


def expected(source: str) -> set[tuple[str, str, int]]:
    """The (code, severity, line) findings the snippet declares."""
    found = set()
    for number, line in enumerate(textwrap.dedent(source).splitlines(), start=1):
        for match in _EXPECT.finditer(line):
            found.add((match.group(1), match.group(2), number))
    return found


def static_findings(check, source: str) -> set[tuple[str, str, int]]:  # noqa: ANN001
    """(code, severity, line) of every static finding ``check`` makes on the snippet."""
    return {(f.code, f.severity.value, f.location.line) for f in check.check_static(context(source))}
