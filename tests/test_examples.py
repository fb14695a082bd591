"""Every example in examples/ runs through convcheck: the buggy ones get their finding, the fixed ones none.

Expectations live in the examples themselves:
- ``# convcheck-args: --nproc-per-node 2 ...`` (optional) gives the options for ``convcheck run``;
- ``# expect: CC004 error`` on a line says a finding with that code and severity points at that line.
A fixed twin (``*_fixed.py``) must produce no finding at all.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from cc_testing import EXAMPLES, convcheck

_ARGS = re.compile(r"#\s*convcheck-args:\s*(.+)$")
_EXPECT = re.compile(r"#\s*expect:\s*(CC\d{3})\s+(error|warning|info)\b")


def _examples() -> list[Path]:
    return sorted(p for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))


def parse_expectations(path: Path) -> tuple[list[str], list[tuple[str, str, int]]]:
    """The run options and the (code, severity, line) findings an example declares."""
    args: list[str] = []
    expected = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if match := _ARGS.search(line):
            args = shlex.split(match.group(1))
        for match in _EXPECT.finditer(line):
            expected.append((match.group(1), match.group(2), number))
    return args, expected


@pytest.mark.parametrize("example", _examples(), ids=lambda p: p.stem)
def test_example(example: Path) -> None:
    args, expected = parse_expectations(example)
    result = convcheck("run", "--format", "json", "--fail-on", "never", *args, example, cwd=example.parent)
    assert result.code == 0, result.stderr + result.stdout
    findings = result.report["findings"]
    got = {(f["code"], f["severity"], f["location"]["line"] if f["location"] else None) for f in findings}
    if example.stem.endswith("_fixed"):
        assert not expected, "a fixed example declares no expectation"
        # Silent, info included: advice that fires on correct code is noise.
        assert findings == [], findings
    else:
        assert expected, f"{example.name} declares no '# expect:' line"
        for item in expected:
            assert item in got, f"expected {item} in {sorted(got, key=str)}"
        twin = example.with_name(example.stem + "_fixed.py")
        assert twin.exists(), f"{example.name} has no fixed twin {twin.name}"


def test_parse_expectations(tmp_path: Path) -> None:
    script = tmp_path / "x.py"
    script.write_text("# convcheck-args: --nproc-per-node 2 --steps 8\nx = 1\ny = 2  # expect: CC004 error\n")
    assert parse_expectations(script) == (["--nproc-per-node", "2", "--steps", "8"], [("CC004", "error", 3)])
