"""Which recorder classes a process installs, without a whole run."""

from __future__ import annotations

import pytest

from convcheck.runtime import recorders


def test_built_in_names_are_resolved_without_reading_installed_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(**_: object) -> None:
        raise AssertionError("entry points were read")

    monkeypatch.setattr(recorders, "entry_points", refuse)

    assert recorders.recorders_for({"seeding", "graph"}) == recorders.builtin_recorders()
    assert recorders.recorders_for(set()) == recorders.builtin_recorders()


def test_a_name_that_is_not_built_in_reads_the_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = []
    monkeypatch.setattr(recorders, "entry_points", lambda **kw: asked.append(kw) or [])

    assert recorders.recorders_for({"cross-entropy-targets"}) == recorders.builtin_recorders()
    assert recorders.recorders_for(None) == recorders.builtin_recorders()
    assert asked == [{"group": "convcheck.recorders"}] * 2
