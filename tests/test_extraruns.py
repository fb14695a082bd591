"""When the checks' extra runs are made: beside the main run where cores allow, after it only when it calls for one."""

from __future__ import annotations

from pathlib import Path

import pytest

from convcheck.extraruns import made_later, not_needed, report_rows
from convcheck.registry import RunVariant
from convcheck.runtime.launcher import LaunchResult
from convcheck.runtime.trace import RunTrace, load_events

_TRAINED = RunTrace(processes=[load_events([{"ev": "process", "pid": 1, "role": "entry"},
                                            {"ev": "backward", "n": 1, "step": 0, "loss": 0.5},
                                            {"ev": "step", "opt": 0, "n": 1}])])


def _variant(needed: bool | None, processes: int = 1) -> RunVariant:
    return RunVariant(nproc_per_node=processes, steps=5, needed=None if needed is None else (lambda run: needed),
                      left_out="nothing called for it")


@pytest.mark.parametrize(("main", "variant", "cores", "later"), [
    (1, 1, 2, False),   # a core each: beside the main run
    (1, 1, 1, True),
    (2, 2, 2, True),
    (2, 2, 4, False),
    (4, 4, 2, True),
])
def test_a_run_that_allows_it_is_made_later_only_where_the_main_run_fills_the_cores(
        main: int, variant: int, cores: int, later: bool) -> None:
    assert made_later({"repeat": _variant(True, variant)}, main, cores) == ({"repeat"} if later else set())


def test_a_run_that_does_not_allow_it_is_always_made_beside() -> None:
    assert made_later({"world-size-1": _variant(None)}, 4, 2) == set()


def _launched(tmp_path: Path, **state: bool) -> LaunchResult:
    return LaunchResult(workers=[], trace_dir=tmp_path, scratch_dir=tmp_path, **state)


def test_why_a_later_run_is_left_out(tmp_path: Path) -> None:
    done = _launched(tmp_path)
    assert not_needed(_variant(True), done, _TRAINED, 2, 2) is None
    assert not_needed(_variant(False), done, _TRAINED, 2, 2) == \
        "the main run's 2 processes fill the 2 cores, and nothing called for it"
    assert not_needed(_variant(False), done, _TRAINED, 1, 1) == \
        "the main run's 1 process fills the 1 core, and nothing called for it"
    assert not_needed(_variant(True), done, RunTrace(processes=[]), 1, 1) == "the main run made no training step to compare with"
    assert not_needed(_variant(True), _launched(tmp_path, interrupted=True), _TRAINED, 1, 1) == \
        "the main run was interrupted"
    # A second run of a script that hung would wait as long again.
    assert not_needed(_variant(True), _launched(tmp_path, timed_out=True), _TRAINED, 1, 1) == "the main run timed out"


def test_a_check_that_fails_to_decide_gets_its_run(tmp_path: Path) -> None:
    def broken(run: RunTrace) -> bool:
        raise KeyError("a check's own bug")

    variant = RunVariant(nproc_per_node=1, steps=5, needed=broken)
    assert not_needed(variant, _launched(tmp_path), _TRAINED, 1, 1) is None


def test_report_rows_say_when_each_run_was_made() -> None:
    variants = {"repeat": _variant(True), "world-size-1": RunVariant(nproc_per_node=1, steps=1)}
    trace = RunTrace(processes=[])
    trace.variants["world-size-1"] = _TRAINED
    rows = report_rows(variants, {"repeat": "CC002", "world-size-1": "CC005"}, trace, {"repeat"},
                       {"repeat": "CC002's repeat run was not made: why."}, set())
    assert rows == [
        {"label": "repeat", "check": "CC002", "processes": 1, "steps": 5, "steps_made": 0, "when": "left-out",
         "why": "CC002's repeat run was not made: why."},
        {"label": "world-size-1", "check": "CC005", "processes": 1, "steps": 1, "steps_made": 1, "when": "beside"},
    ]
