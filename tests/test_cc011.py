"""CC011 scheduler-before-optimizer: recorded traces, and a Trainer-style script."""

from __future__ import annotations

import pytest
from cc_testing import SCRIPTS, convcheck

from convcheck.checks.cc011_scheduler_before_optimizer import SchedulerBeforeOptimizer, _project
from convcheck.runtime.trace import RunTrace, load_events

SCHED_LOC = ["train.py", 25]


def events(steps: int, order: str, cls: str = "StepLR", settings: dict | None = None, lrs: list[float] = None,
           loader: tuple[int, int] | None = None, epoch_every: int | None = None) -> list[dict]:
    """``order`` spells one iteration: s = optimizer step, l = scheduler step, e = end of an epoch."""
    out = [{"ev": "process"},
           {"ev": "sched_step", "cls": cls, "sched": 0, "step": 0, "internal": True, "lrs": [0.1],
            "loc": ["train.py", 10], "settings": settings or {"step_size": 30, "gamma": 0.1}}]
    if loader:
        out.append({"ev": "loader", "id": 0, "batch_size": loader[1], "dataset_len": loader[0], "drop_last": False})
    n = 0
    k = 0
    for _ in range(steps):
        for op in order:
            if op == "s":
                n += 1
                out += [{"ev": "backward", "n": n, "step": n - 1, "loss": 1.0},
                        {"ev": "step", "opt": 0, "n": n, "lrs": [0.1], "loc": ["train.py", 24], "grad": [0]}]
            elif op == "l":
                lr = lrs[k] if lrs and k < len(lrs) else 0.1
                k += 1
                out.append({"ev": "sched_step", "cls": cls, "sched": 0, "step": n, "internal": False, "lrs": [lr],
                            "loc": SCHED_LOC})
    return out


def runtime(evts: list[dict]) -> list:
    return list(SchedulerBeforeOptimizer().check_runtime(RunTrace(processes=[load_events(evts)]), None))


def test_scheduler_before_the_first_optimizer_step() -> None:
    evts = events(4, "lssss")
    [finding] = runtime(evts)
    assert finding.severity.value == "error"
    assert (finding.location.path, finding.location.line) == ("train.py", 25)
    assert "ran before the first `optimizer.step()`" in finding.message


def test_scheduler_after_the_optimizer_is_quiet() -> None:
    assert runtime(events(4, "ssssl")) == []
    assert runtime(events(6, "sl", cls="OneCycleLR", lrs=[0.1, 0.09, 0.08, 0.07, 0.06, 0.05])) == []


def test_skipped_scaler_step_is_not_an_ordering_mistake() -> None:
    evts = events(3, "sl")
    evts.insert(2, {"ev": "scaler", "call": "step", "skipped": True, "step": 0})
    evts.insert(3, {"ev": "sched_step", "cls": "StepLR", "sched": 0, "step": 0, "internal": False, "lrs": [0.1],
                    "loc": SCHED_LOC})
    assert runtime(evts) == []


def test_per_epoch_scheduler_stepped_per_batch_collapses_in_the_run() -> None:
    lrs = [0.1 * 0.5 ** (i + 1) for i in range(8)]
    [finding] = runtime(events(8, "sl", cls="ExponentialLR", settings={"gamma": 0.5}, lrs=lrs))
    assert finding.severity.value == "error"
    assert finding.location.line == 25
    assert finding.evidence["lr_by_scheduler_step"][0] == (1, 0.05)
    assert "within this run" in finding.message


def test_per_epoch_scheduler_projected_over_the_first_epoch() -> None:
    evts = events(6, "sl", cls="StepLR", settings={"step_size": 30, "gamma": 0.1}, loader=(3200, 32))
    [finding] = runtime(evts)
    assert finding.evidence["batches_per_epoch"] == 100
    assert abs(finding.evidence["first_epoch_projection"]["end"] - 0.1 * 0.1 ** 3) < 1e-12
    assert "100 batches per epoch" in finding.message


def test_per_batch_schedule_sized_in_batches_is_quiet() -> None:
    # T_max = 20 epochs x 100 batches: stepping per batch is what the settings mean.
    evts = events(6, "sl", cls="CosineAnnealingLR", settings={"T_max": 2000, "eta_min": 0.0}, loader=(3200, 32))
    assert runtime(evts) == []


def test_per_epoch_stepping_is_quiet() -> None:
    lrs = [0.01, 0.001, 0.0001]
    assert runtime(events(3, "sssl", cls="StepLR", settings={"step_size": 1, "gamma": 0.1}, lrs=lrs)) == []


def test_projection_formulas() -> None:
    assert _project("MultiStepLR", {"milestones": [3, 5], "gamma": 0.1}, 1.0, 10)["end"] == 0.1 ** 2
    assert _project("CosineAnnealingLR", {"T_max": 10, "eta_min": 0.0}, 1.0, 10)["lowest"] < 1e-12
    assert _project("LambdaLR", {}, 1.0, 10) is None


def test_trainer_steps_exponential_lr_per_batch() -> None:
    result = convcheck("run", "--format", "json", "--fail-on", "never", "--steps", "6", "--select", "CC011",
                       SCRIPTS / "cc011_trainer.py")
    [finding] = result.findings("CC011")
    assert (finding["severity"], finding["location"]["line"]) == ("error", 22)
    assert finding["evidence"]["batches_per_epoch"] == 16


# -- static --------------------------------------------------------------------------------------------

STATIC_CASES = {
    "scheduler_first_in_the_batch_loop": """
        for x, y in loader:
            loss = criterion(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            scheduler.step()  # expect: CC011 warning
            optimizer.step()
    """,
    "scheduler_at_the_top_of_the_epoch": """
        for epoch in range(10):
            lr_sched.step()  # expect: CC011 warning
            for x, y in loader:
                self.opt.step()
    """,
    "optimizer_first": """
        for epoch in range(10):
            for x, y in loader:
                opt.step()
                scheduler.step()
            scheduler.step()
    """,
    "plateau_after_validation": """
        for epoch in range(10):
            train_one_epoch(model, opt)
            scheduler.step(val_loss)
    """,
}


@pytest.mark.parametrize("name", sorted(STATIC_CASES))
def test_static(name: str) -> None:
    from static_expect import expected, static_findings

    source = STATIC_CASES[name]
    assert static_findings(SchedulerBeforeOptimizer(), source) == expected(source)
