"""Every check is documented where it is declared, and docs/rules.md is that documentation."""

from __future__ import annotations

import re

import pytest
from cc_testing import REPO

from convcheck.catalog import all_checks
from convcheck.explain import REQUIRED_SECTIONS, rules_markdown

CHECKS = all_checks()


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.code)
def test_check_declares_its_contract(check: type) -> None:
    assert re.fullmatch(r"CC\d{3}", check.code)
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", check.name)
    assert check.summary and check.summary.endswith(".")
    doc = check.documentation()
    missing = [section for section in REQUIRED_SECTIONS if f"## {section}" not in doc]
    assert missing == [], f"{check.code} docstring lacks {missing}"
    assert check.evidence_kinds(), f"{check.code} implements neither static nor runtime analysis"


def test_codes_and_names_are_unique_and_in_order() -> None:
    codes = [c.code for c in CHECKS]
    names = [c.name for c in CHECKS]
    assert len(set(codes)) == len(codes) and len(set(names)) == len(names)
    assert codes == sorted(codes)


def test_the_seven_named_checks_keep_their_codes() -> None:
    names = {c.code: c.name for c in CHECKS}
    assert [names[f"CC00{i}"] for i in range(1, 8)] == [
        "state-dict-prefix", "unseeded-rng", "loss-double-normalization", "sampler-epoch-not-set",
        "lr-not-scaled", "frozen-parameters", "fp16-overflow",
    ]


def test_docs_rules_md_is_generated_from_the_docstrings() -> None:
    assert (REPO / "docs" / "rules.md").read_text() == rules_markdown(), (
        "docs/rules.md is stale: run `convcheck rules --format markdown > docs/rules.md`"
    )
