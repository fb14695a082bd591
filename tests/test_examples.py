"""Every buggy example in examples/ runs through convcheck and gets its finding (the fixed twins: test_examples_fixed.py).

Expectations live in the examples themselves:
- ``# convcheck-args: --nproc-per-node 2 ...`` (optional) gives the options for ``convcheck run``;
- ``# expect: CC004 error`` on a line says a finding with that code and severity points at that line.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cc_testing import convcheck, examples, parse_expectations

# Long end-to-end runs (every bundled buggy example, run end to end): `python -m pytest -m slow`, which CI runs too.
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("example", examples(fixed=False), ids=lambda p: p.stem)
def test_example(example: Path) -> None:
    args, expected = parse_expectations(example)
    result = convcheck("run", "--format", "json", "--fail-on", "never", *args, example, cwd=example.parent)
    assert result.code == 0, result.stderr + result.stdout
    findings = result.report["findings"]
    got = {(f["code"], f["severity"], f["location"]["line"] if f["location"] else None) for f in findings}
    assert expected, f"{example.name} declares no '# expect:' line"
    for item in expected:
        assert item in got, f"expected {item} in {sorted(got, key=str)}"
    twin = example.with_name(example.stem + "_fixed.py")
    assert twin.exists(), f"{example.name} has no fixed twin {twin.name}"


def test_parse_expectations(tmp_path: Path) -> None:
    script = tmp_path / "x.py"
    script.write_text("# convcheck-args: --nproc-per-node 2 --steps 8\nx = 1\ny = 2  # expect: CC004 error\n")
    assert parse_expectations(script) == (["--nproc-per-node", "2", "--steps", "8"], [("CC004", "error", 3)])
