"""CC008 grads-not-zeroed: recorded traces, static snippets, and scripts written in other styles."""

from __future__ import annotations

import pytest
from cc_testing import SCRIPTS, convcheck
from static_expect import context, expected, static_findings

from convcheck.checks.cc008_grads_not_zeroed import GradsNotZeroed
from convcheck.runtime.trace import RunTrace, load_events

BACKWARD = ["train.py", 20]
ZERO = ["train.py", 18]


def loop(steps: int, order: str, stale: float = 0.0, present: int = 4, grad: bool = True) -> list[dict]:
    """Events of ``steps`` iterations; ``order`` spells one iteration: z = zero_grad, b = backward, s = step."""
    events = [{"ev": "process", "rank": None}]
    n = backwards = since = 0
    for _ in range(steps):
        for op in order:
            if op == "z":
                events.append({"ev": "zero_grad", "kind": "optimizer", "opt": 0 if n else None, "step": n,
                               "backwards": since, "loc": ZERO})
            elif op == "b":
                backwards += 1
                event = {"ev": "backward", "n": backwards, "step": n, "loss": 1.0, "loc": BACKWARD}
                if since == 0 and n:
                    event["stale_grads"] = {"opt": 0, "present": present if stale else 0, "of": 4, "norm": stale}
                events.append(event)
                since += 1
            elif op == "s":
                n += 1
                events.append({"ev": "step", "opt": 0, "n": n, "backwards": since, "lrs": [0.1],
                               "grad": [0, 1, 2, 3] if grad else [], "grad_norms": [1.0 * n] * 4 if grad else [],
                               "loc": ["train.py", 21]})
                since = 0
    return events


def runtime(events: list[dict]) -> list:
    return list(GradsNotZeroed().check_runtime(RunTrace(processes=[load_events(events)]), None))


def test_never_cleared_is_an_error_with_the_stale_norm() -> None:
    [finding] = runtime(loop(4, "bs", stale=2.5))
    assert finding.severity.value == "error"
    assert (finding.location.path, finding.location.line) == ("train.py", 20)
    assert "`zero_grad()` is never called" in finding.message
    assert finding.evidence["stale_gradient"] == {"before_step": 2, "norm": 2.5, "parameters_with_gradient": 4,
                                                  "parameters": 4}
    assert finding.evidence["steps_without_clear"] == [2, 3, 4]
    assert finding.evidence["grad_norm_by_step"][:2] == [(1, 2.0), (2, 4.0)]


def test_cleared_by_hand_is_quiet() -> None:
    # No zero_grad() call, but the gradients were gone (p.grad = None) before the next backward.
    assert runtime(loop(4, "bs", stale=0.0)) == []


def test_unmeasured_missing_clear_is_a_warning() -> None:
    events = [e for e in loop(4, "bs", stale=2.5)]
    for event in events:
        event.pop("stale_grads", None)
    [finding] = runtime(events)
    assert finding.severity.value == "warning"


def test_cleared_every_step_is_quiet() -> None:
    assert runtime(loop(5, "zbs")) == []
    assert runtime(loop(5, "bsz")) == []


def test_intended_accumulation_is_quiet() -> None:
    assert runtime(loop(5, "zbbbbs")) == []
    assert runtime(loop(5, "bbbbsz")) == []


def test_cleared_once_per_epoch_is_reported() -> None:
    events = loop(1, "zbs") + loop(3, "bs", stale=1.0)[1:]
    # renumber the second part so that it follows the first
    steps = 1
    for event in events[4:]:
        if event["ev"] == "step":
            steps += 1
            event["n"] = steps
    [finding] = runtime(events)
    assert finding.severity.value == "error"
    assert "cleared before only 1 of 4 steps" in finding.message


def test_zero_grad_between_backward_and_step_is_an_error() -> None:
    [finding] = runtime(loop(3, "bzs", grad=False))
    assert finding.severity.value == "error"
    assert (finding.location.path, finding.location.line) == ("train.py", 18)
    assert "no parameter had a gradient" in finding.message
    assert finding.evidence["steps"] == [1, 2, 3]


def test_zero_grad_of_another_optimizer_between_backward_and_step_is_quiet() -> None:
    # The step still saw gradients: whatever was cleared was not this optimizer's.
    assert runtime(loop(3, "bzs", grad=True)) == []


def test_two_optimizers_each_cleared_are_quiet() -> None:
    events = [{"ev": "process"}]
    for n in range(1, 4):
        for opt in (0, 1):
            events += [
                {"ev": "zero_grad", "kind": "optimizer", "opt": opt, "step": n, "backwards": 0, "loc": ZERO},
                {"ev": "backward", "n": n, "step": n, "loss": 1.0, "loc": BACKWARD,
                 "stale_grads": {"opt": 1 - opt, "present": 4, "of": 4, "norm": 3.0}},
                {"ev": "step", "opt": opt, "n": n, "backwards": 1, "lrs": [0.1], "grad": [0]},
            ]
    assert runtime(events) == []


def test_no_training_is_quiet() -> None:
    assert runtime([{"ev": "process"}]) == []


def test_trainer_class_clearing_before_step() -> None:
    result = convcheck("run", "--format", "json", "--fail-on", "never", "--steps", "4", "--select", "CC008",
                       SCRIPTS / "cc008_trainer.py")
    [finding] = result.findings("CC008")
    assert (finding["severity"], finding["location"]["line"]) == ("error", 16)
    assert finding["evidence"]["gradients_at_step"] == "none"


def test_accumulation_cleared_by_hand_is_quiet() -> None:
    result = convcheck("run", "--format", "json", "--fail-on", "never", "--steps", "4", "--select", "CC008",
                       SCRIPTS / "cc008_accumulate.py")
    assert result.code == 0, result.stderr
    assert result.findings("CC008") == []


# -- static ----------------------------------------------------------------------------------------------

STATIC_CASES = {
    "never_cleared": """
        for x, y in loader:
            loss = criterion(model(x), y)
            loss.backward()  # expect: CC008 warning
            opt.step()
    """,
    "zero_grad": """
        for x, y in loader:
            opt.zero_grad()
            criterion(model(x), y).backward()
            opt.step()
    """,
    "cleared_by_hand": """
        for x, y in loader:
            criterion(model(x), y).backward()
            opt.step()
            for p in model.parameters():
                p.grad = None
    """,
    "no_optimizer_step": """
        loss.backward()
        scheduler.step()
    """,
}


@pytest.mark.parametrize("name", sorted(STATIC_CASES))
def test_static(name: str) -> None:
    source = STATIC_CASES[name]
    assert static_findings(GradsNotZeroed(), source) == expected(source)


def test_static_finding_waits_for_the_run() -> None:
    check = GradsNotZeroed()
    check.runtime_follows = True
    assert list(check.check_static(context(STATIC_CASES["never_cleared"]))) == []
    # The run trained and its evidence decides: the runtime finding replaces the static one.
    assert [f.source for f in check.check_runtime(RunTrace(processes=[load_events(loop(3, "bs", stale=1.0))]),
                                                  None)] == ["runtime"]
    check.check_static(context(STATIC_CASES["never_cleared"]))
    assert [f.source for f in check.check_runtime(RunTrace(processes=[]), None)] == ["static"]


def test_zero_grad_before_every_micro_batch_and_the_legal_shapes_around_it() -> None:
    def run(*flags: str) -> list[dict]:
        result = convcheck("run", "--format", "json", "--fail-on", "never", "--steps", "8",
                           SCRIPTS / "cc008_micro_batches.py", *flags)
        assert result.code == 0, result.stdout + result.stderr
        return result.findings()

    [finding] = run("--bug")
    assert (finding["code"], finding["severity"], finding["location"]["line"]) == ("CC008", "error", 48)
    assert finding["evidence"]["backwards_per_step"] == 4
    assert "each step uses only the last micro-batch's gradient" in finding["message"]
    # Accumulating correctly, LBFGS re-running backward in its closure, a SAM-style two-pass step:
    # no CC008, and no CC003 "accumulation not divided" either.
    assert run() == []
    assert run("--lbfgs") == []
    assert run("--sam") == []
