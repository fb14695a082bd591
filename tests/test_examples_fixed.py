"""Every fixed twin in examples/ runs through convcheck and reports nothing at all, info included.

Advice that fires on correct code is noise. These runs are in a file of their own so that the
buggy examples and their twins run on both test workers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cc_testing import convcheck, examples, parse_expectations

# Long end-to-end runs (every fixed twin, run end to end): `python -m pytest -m slow`, which CI runs too.
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("example", examples(fixed=True), ids=lambda p: p.stem)
def test_fixed_example_is_silent(example: Path) -> None:
    args, expected = parse_expectations(example)
    assert not expected, "a fixed example declares no expectation"
    result = convcheck("run", "--format", "json", "--fail-on", "never", *args, example, cwd=example.parent)
    assert result.code == 0, result.stderr + result.stdout
    assert result.report["findings"] == [], result.report["findings"]
