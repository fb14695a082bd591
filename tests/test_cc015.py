"""CC015 loss-diverging: recorded loss curves, and a regression with SGD + momentum that explodes."""

from __future__ import annotations

import math

import pytest
from cc_testing import SCRIPTS, convcheck

from convcheck.checks.cc012_loss_not_decreasing import LossNotDecreasing
from convcheck.checks.cc015_loss_diverging import LossDiverging
from convcheck.runtime.trace import RunTrace, load_events

OPT_LOC = ["train.py", 12]
PARAMS = [{"id": 0, "name": "0.weight", "shape": [64, 20], "requires_grad": True, "dtype": "torch.float32"},
          {"id": 1, "name": "0.bias", "shape": [64], "requires_grad": True, "dtype": "torch.float32"}]


def trace(losses: list[float], cls: str = "AdamW", lr: float = 20.0, ratios: dict[int, list] | None = None,
          lrs: list[float] | None = None, extra: list[dict] = (), optimizers: int = 1) -> RunTrace:
    """One process: a model, ``optimizers`` optimizers, one backward and one step per loss."""
    events: list[dict] = [{"ev": "process"}, {"ev": "model", "cls": "Sequential", "params": PARAMS}, *extra]
    for opt in range(optimizers):
        events.append({"ev": "optimizer", "opt": opt, "cls": cls, "loc": OPT_LOC,
                       "groups": [{"params": [0, 1], "lr": lr}]})
    for n, loss in enumerate(losses, start=1):
        step = {"ev": "step", "opt": (n - 1) % optimizers, "n": n, "backwards": 1, "grad": [0, 1], "loc": None,
                "lrs": [lrs[n - 1] if lrs else lr]}
        if ratios and n in ratios:
            step["update_ratios"] = ratios[n]
        events += [{"ev": "backward", "n": n, "step": n - 1, "loss": loss, "loc": ["train.py", 30]}, step]
    return RunTrace(processes=[load_events(events)])


def runtime(run: RunTrace) -> list:
    return list(LossDiverging().check_runtime(run, None))


def growing(start: float, factor: float, steps: int = 20) -> list[float]:
    return [start * factor ** i for i in range(steps)]


def test_steady_growth_is_a_warning_at_the_optimizer_with_a_suggested_lr_and_warmup() -> None:
    [finding] = runtime(trace(growing(8.67, 1.38, 9), ratios={1: [140.0, math.inf], 2: [30.0, 5.0]}))
    assert (finding.severity.value, finding.location.line) == ("warning", 12)
    assert finding.message.startswith("The loss rose from 8.67 (step 1) to ")
    assert "with AdamW at lr=20: the run is diverging." in finding.message
    assert ("At step 1 the largest update measured moved `0.weight` by ||dw||/||w|| = 140 (stable training moves "
            "weights by about 0.001 of their norm per step; an adaptive optimizer on its first steps, about 1e-2)."
            in finding.message)
    assert finding.evidence["suggested_lr"] == 0.001  # 20 * 1e-2 / 140 = 1.4e-3, rounded down to 1e-3
    assert finding.evidence["suggest_warmup"] is True
    assert finding.fix.startswith("Lower the learning rate to about 0.001 (an estimate: lr x 0.01 / the measured")
    assert "warm the lr up" in finding.fix


def test_growth_of_three_orders_of_magnitude_is_an_error() -> None:
    [finding] = runtime(trace(growing(1.0, 3.0, 12), cls="SGD", ratios={1: [3.0, 1.0]}))
    assert finding.severity.value == "error"
    assert "orders of magnitude" in finding.message
    assert finding.evidence["suggested_lr"] == 0.005  # 20 * 1e-3 / 3 = 6.7e-3 -> 5e-3
    assert finding.evidence["suggest_warmup"] is False  # SGD
    assert "an adaptive optimizer" not in finding.message


def test_a_jump_that_never_comes_back_is_divergence() -> None:
    losses = [1.05, 1.5e7, 3.7e6, 2.3e5, 1.9e4, 1.5e4, 1.4e4, 7.3e4, 3016, 1043, 1292, 4.25, 6663, 31.6, 1.48,
              2.24, 4485, 279, 1.22, 1.97]
    [finding] = runtime(trace(losses, ratios={1: [282.0, None]}))
    assert finding.severity.value == "error"
    assert finding.evidence["jumped"] is True
    assert finding.message.startswith("The loss jumped from 1.05 (step 1) to 1.5e+07 and stayed far above: over the "
                                      "19 steps after, it was 3016 at the median")


def test_growth_into_nan_is_an_error_and_cc012_stays_quiet() -> None:
    losses = [426.0, 1.2e5, 2.9e8, 3.3e13, 4.9e18, math.inf, math.nan, math.nan, math.nan]
    run = trace(losses, cls="SGD", lr=0.5, ratios={1: [199.0, 2.0]})
    [finding] = runtime(run)
    assert finding.severity.value == "error"
    assert finding.evidence["nonfinite_from_step"] == 6
    assert "and is inf/NaN from step 6 on, with SGD at lr=0.5" in finding.message
    assert LossNotDecreasing().check_runtime(run, None) == []


def test_nan_right_after_a_step_larger_than_the_weights() -> None:
    run = trace([2.3, math.nan, math.nan, math.nan], cls="SGD", lr=100.0, ratios={1: [40.0, 3.0]})
    [finding] = runtime(run)
    assert finding.severity.value == "error"
    assert finding.message.startswith("The loss was 2.3 at step 1 and is inf/NaN from step 2 on")
    assert LossNotDecreasing().check_runtime(run, None) == []


def test_nan_with_no_growth_and_small_updates_is_cc012s() -> None:
    run = trace([0.7, 0.69, 0.68, math.nan, math.nan, math.nan], cls="SGD", lr=0.1, ratios={1: [1e-3, 1e-2]})
    assert runtime(run) == []
    [finding] = LossNotDecreasing().check_runtime(run, None)
    assert finding.code == "CC012" and finding.evidence["nonfinite_from_step"] == 4


@pytest.mark.parametrize("losses", [
    [2.3 * 0.95 ** i for i in range(20)],                                      # falling
    [2.3, 2.5, 2.9, 2.4, 2.1, 1.9, 1.8, 1.7, 1.6, 1.5],                        # a short rise, small changes
    [2.3, 30.0, 5.0, 2.5, 2.0, 1.8, 1.7, 1.6, 1.5, 1.4],                       # one spike, recovered
    [0.5, 0.1, 0.9, 0.05, 1.2, 0.3, 0.6, 0.08, 0.7, 0.4, 0.2, 0.9],            # noisy, no trend
    [2.3, 0.5, 0.05, 0.01, 0.003, 0.01, 0.02, 0.03, 0.04, 0.05],               # near 0, back up far below start
])
def test_curves_that_do_not_diverge_are_quiet(losses: list[float]) -> None:
    assert runtime(trace(losses, ratios={1: [0.05, 0.1]})) == []


def test_two_optimizers_or_negative_losses_are_info_at_most() -> None:
    [gan] = runtime(trace(growing(0.7, 1.5, 12), optimizers=2))
    assert gan.severity.value == "info"
    assert "2 optimizers step" in gan.message
    [negative] = runtime(trace([-1.0, -0.5, 0.2] + growing(0.5, 1.6, 10)))
    assert negative.severity.value == "info"
    assert "the loss is negative at some steps" in negative.message


def test_growth_with_tiny_updates_is_info() -> None:
    [finding] = runtime(trace(growing(1.0, 1.5, 12), cls="SGD", ratios={1: [1e-5, 1e-5]}))
    assert finding.severity.value == "info"
    assert "largest measured update ratio is only 1e-05" in finding.message
    assert finding.evidence["suggested_lr"] is None
    assert finding.fix.startswith("Lower the learning rate, 10x at a time from lr=20")
    [moderate] = runtime(trace(growing(1.0, 1.5, 12), cls="SGD", ratios={1: [5e-3, 1e-3]}))
    assert moderate.severity.value == "info"
    assert moderate.evidence["suggested_lr"] == 2.0  # 20 * 1e-3 / 5e-3 = 4 -> 2


def test_a_warmup_in_the_lrs_means_no_warmup_advice() -> None:
    [finding] = runtime(trace(growing(1.0, 2.0, 10), lr=5.0, lrs=[0.5 * (i + 1) for i in range(10)],
                              ratios={1: [20.0, 1.0]}))
    assert finding.evidence["suggest_warmup"] is False
    assert "warm the lr up" not in finding.fix


@pytest.mark.parametrize("extra", [
    [{"ev": "scaler", "call": "scale", "scale": 65536.0, "step": 0}],
    [{"ev": "autocast", "device": "cpu", "dtype": "torch.float16", "enabled": True, "loc": None, "step": 0}],
])
def test_fp16_runs_are_left_to_cc007(extra: list[dict]) -> None:
    assert runtime(trace(growing(1.0, 3.0, 12), extra=extra)) == []


def test_bfloat16_autocast_is_judged_like_float32() -> None:
    bf16 = [{"ev": "autocast", "device": "cpu", "dtype": "torch.bfloat16", "enabled": True, "loc": None, "step": 0}]
    assert len(runtime(trace(growing(1.0, 3.0, 12), extra=bf16))) == 1


@pytest.mark.slow
def test_sgd_momentum_regression_explodes_to_nan_end_to_end() -> None:
    found = convcheck("run", "--format", "json", SCRIPTS / "cc015_momentum_regression.py", "--lr", "0.5")
    quiet = convcheck("run", "--format", "json", "--fail-on", "never", SCRIPTS / "cc015_momentum_regression.py")
    assert found.code == 1, found.stdout + found.stderr
    [finding] = found.findings()
    assert (finding["code"], finding["severity"], finding["location"]["line"]) == ("CC015", "error", 31)
    assert finding["evidence"]["turn_step"] == 1
    assert finding["evidence"]["nonfinite_from_step"] == 9
    assert finding["evidence"]["update_param"] == "out.weight"
    assert finding["evidence"]["suggested_lr"] == 2e-06
    assert quiet.code == 0, quiet.stderr
    assert quiet.findings() == []
