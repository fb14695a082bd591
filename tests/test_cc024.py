"""CC024 vanishing-or-exploding-gradients: recorded traces, a dead ReLU layer end to end, a residual net quiet."""

from __future__ import annotations

import pytest
from cc_testing import SCRIPTS, convcheck
from static_expect import context

from convcheck.checks.cc006_frozen_parameters import FrozenParameters
from convcheck.checks.cc024_vanishing_or_exploding_gradients import VanishingOrExplodingGradients
from convcheck.runtime.trace import RunTrace, load_events

LOC = ["train.py", 18]


def layer(name: str, kind: str = "weight", param: int | None = None, zero: bool = False, cls: str = "Linear",
          trainable: bool = True, dead_units: float | None = None, batch: int = 64) -> dict:
    entry = {"name": name, "cls": cls if kind != "relu" else "ReLU", "kind": kind, "calls": 1,
             "zero_calls": int(zero), "measured": 1}
    if kind != "relu":
        entry.update(param=param, trainable=trainable)
    if dead_units is not None:
        entry.update(dead_units=dead_units, batch=batch)
    return entry


def mlp(depth: int, dead: str | None = None, **relu: object) -> list[dict]:
    """Linear 0, ReLU 1, Linear 2, ... in forward order; param i for Linear i."""
    layers = []
    for i in range(depth):
        layers.append(layer(f"{2 * i}", param=i))
        if i < depth - 1:
            layers.append(layer(f"{2 * i + 1}", kind="relu", zero=dead == f"{2 * i + 1}", **relu))
    return layers


def trace(layers: list[dict], norms: list[list[float]], losses: list[float] | None = None,
          frozen: set[int] = frozenset(), extra: list[dict] = ()) -> RunTrace:
    """One process; ``norms[k]`` are the gradient norms of params 0..n-1 on sampled step k+1."""
    n = len(norms[0])
    params = [{"id": i, "name": f"{2 * i}.weight", "shape": [8, 8], "requires_grad": i not in frozen,
               "dtype": "torch.float32"} for i in range(n)]
    events: list[dict] = [{"ev": "process"}, {"ev": "model", "cls": "Sequential", "params": params},
                          {"ev": "optimizer", "opt": 0, "cls": "SGD", "loc": ["train.py", 9],
                           "groups": [{"params": [i for i in range(n) if i not in frozen], "lr": 0.1}]}, *extra]
    losses = losses or [0.69] * 10
    trained = [i for i in range(n) if i not in frozen]
    for s, loss in enumerate(losses, start=1):
        if s <= 3:
            events.append({"ev": "gradflow", "step": s, "root": 0, "loc": LOC, "layers": layers})
        events.append({"ev": "backward", "n": s, "step": s - 1, "loss": loss, "loc": ["train.py", 20]})
        step = {"ev": "step", "opt": 0, "n": s, "backwards": 1, "lrs": [0.1], "grad": trained, "loc": None}
        if s <= len(norms):
            step["grad_norms"] = [norms[s - 1][i] for i in trained]
        events.append(step)
    return RunTrace(processes=[load_events(events)])


def runtime(run: RunTrace) -> list:
    return list(VanishingOrExplodingGradients().check_runtime(run, None))


def vanishing(steps: int = 5, first: float = 1e-9) -> list[list[float]]:
    return [[first, 1e-5, 1e-2, 1.0] for _ in range(steps)]


def test_vanishing_on_every_step_with_a_flat_loss_is_a_warning_at_the_forward() -> None:
    [finding] = runtime(trace(mlp(4), vanishing()))
    assert (finding.severity.value, finding.location.line) == ("warning", 18)
    assert finding.message.startswith(
        "Gradients are vanishing through the 4 weight layers from `6` (Linear, the last) down to `0` (Linear, the "
        "first): the first layer's gradient norm is 1e-09 times the last layer's (9 orders of magnitude) on 5 of 5 "
        "sampled steps. The loss is not decreasing")
    assert finding.evidence["direction"] == "vanishing"


def test_exploding_gradients() -> None:
    [finding] = runtime(trace(mlp(4), [[1e8, 1e4, 10.0, 1e-1]] * 4))
    assert finding.evidence["direction"] == "exploding"
    assert "(9 orders of magnitude)" in finding.message


def test_a_decreasing_loss_or_too_few_steps_make_it_advice() -> None:
    [falling] = runtime(trace(mlp(4), vanishing(), losses=[2.3 * 0.8 ** i for i in range(10)]))
    assert falling.severity.value == "info"
    assert "Advice only: the loss is decreasing" in falling.message
    [short] = runtime(trace(mlp(4), vanishing(steps=2)))
    assert short.severity.value == "info"
    assert "not on every sampled step (2 of 2, at least 3 needed)" in short.message


def test_a_span_on_a_minority_of_steps_or_under_six_orders_is_quiet() -> None:
    assert runtime(trace(mlp(4), vanishing(first=1e-5))) == []
    mixed = vanishing(steps=2) + [[1e-2, 1e-2, 1e-2, 1.0]] * 3
    assert runtime(trace(mlp(4), mixed)) == []


def test_embeddings_tied_weights_and_no_grad_params_are_left_out() -> None:
    # An embedding first (tiny sparse gradient) and a head tied to it: the compared layers are 1..3.
    layers = [layer("wte", kind="embedding", param=0, cls="Embedding"), *mlp(4)[2:], layer("head", param=0)]
    assert runtime(trace(layers, vanishing())) == []


def test_a_frozen_first_layer_is_a_pretrained_backbone() -> None:
    layers = [layer("0", param=0, trainable=False), *mlp(4)[1:]]
    assert runtime(trace(layers, vanishing(), frozen={0})) == []


def test_a_dead_relu_that_stops_all_gradient_below_is_a_warning_and_not_cc006s() -> None:
    run = trace(mlp(4, dead="3"), [[0.0, 0.0, 0.5, 1.0]] * 5)
    [finding] = runtime(run)
    assert (finding.severity.value, finding.evidence["dead_layer"]) == ("warning", "3")
    assert finding.message == (
        "`3` (ReLU) outputs zero for every sample in all 3 training forwards recorded on the first steps: no "
        "gradient passes it, and the 2 weight layers below it (`0`, `2`) got exactly zero gradient.")
    assert [f.code for f in FrozenParameters().check_runtime(run, context("x = 1\n"))] == []


def test_without_the_dead_layer_cc006_reports_the_layers_with_no_gradient() -> None:
    run = trace(mlp(4), [[0.0, 0.0, 0.5, 1.0]] * 5)
    assert runtime(run) == []
    [finding] = FrozenParameters().check_runtime(run, context("x = 1\n"))
    assert finding.evidence["never_given_a_gradient"] == ["0.weight", "2.weight"]


def test_a_dead_layer_with_gradient_below_through_another_path_is_advice() -> None:
    [finding] = runtime(trace(mlp(4, dead="3"), [[0.1, 0.2, 0.5, 1.0]] * 5))
    assert finding.severity.value == "info"
    assert "Advice only: layers below it still got a gradient (`0`, `2`), through another path." in finding.message


def test_a_zero_input_to_a_weight_layer_stands_for_a_functional_relu() -> None:
    layers = [layer("fc1", param=0), layer("fc2", param=1), layer("fc3", param=2, zero=True), layer("head", param=3)]
    [finding] = runtime(trace(layers, [[0.0, 0.0, 0.0, 1.0]] * 5))
    assert finding.severity.value == "warning"
    assert finding.message.startswith("the input of `fc3` (Linear) is zero for every sample (a ReLU before it, "
                                      "applied inside forward, is dead)")


def test_the_first_layer_zero_input_or_a_layer_dead_on_one_step_only_is_quiet() -> None:
    layers = [layer("fc1", param=0, zero=True), *mlp(4)[1:]]
    assert runtime(trace(layers, [[0.1, 0.2, 0.5, 1.0]] * 5)) == []
    run = trace(mlp(4, dead="3"), [[0.0, 0.0, 0.5, 1.0]] * 5)
    run.processes[0].events[3]["layers"] = mlp(4)  # the first forward: alive
    assert runtime(run) == []


@pytest.mark.parametrize("batch, share, found", [(64, 0.6, True), (64, 0.3, False), (8, 0.9, False)])
def test_many_dead_units_are_advice(batch: int, share: float, found: bool) -> None:
    findings = runtime(trace(mlp(3, dead_units=share, batch=batch), [[0.1, 0.5, 1.0]] * 5))
    assert [(f.severity.value, f.evidence["layer"]) for f in findings] == ([("info", "1")] if found else [])


def test_no_gradflow_events_no_finding() -> None:
    run = trace(mlp(4), vanishing())
    run.processes[0].events = [e for e in run.processes[0].events if e["ev"] != "gradflow"]
    assert runtime(run) == []


@pytest.mark.slow
@pytest.mark.parametrize("flag, message", [
    ("", "`act2` (ReLU) outputs zero for every sample in all 3 training forwards"),
    ("--functional", "the input of `head` (Linear) is zero for every sample"),
])
def test_a_dead_relu_layer_end_to_end(flag: str, message: str) -> None:
    result = convcheck("run", "--format", "json", "--fail-on", "warning", SCRIPTS / "cc024_dead_relu.py",
                       *filter(None, [flag]))
    assert result.code == 1, result.stdout + result.stderr
    [finding] = result.findings()
    assert (finding["code"], finding["severity"], finding["location"]["line"]) == ("CC024", "warning", 36)
    assert finding["message"].startswith(message)
    assert finding["evidence"]["layers_below"] == ["embed", "middle"]


@pytest.mark.slow
@pytest.mark.parametrize("script, args", [("cc024_dead_relu.py", ["--healthy"]), ("cc024_resnet_bn.py", [])])
def test_healthy_and_residual_batchnorm_nets_are_quiet(script: str, args: list[str]) -> None:
    result = convcheck("run", "--format", "json", "--select", "CC024,CC006", SCRIPTS / script, *args)
    assert result.code == 0, result.stdout + result.stderr
    assert result.findings() == []


@pytest.mark.parametrize("grad, reported", [(1e-9, False), (1e-3, True)])
def test_cc006_leaves_weights_that_a_vanished_gradient_cannot_move_to_cc024(grad: float, reported: bool) -> None:
    run = trace(mlp(2), [[grad, 1.0]] * 5)
    for event in run.processes[0].events:
        if event["ev"] == "step" and "grad_norms" in event:
            event.update(param_norms=[4.0, 4.0], changed=[1])  # layer 0 never moved
    findings = list(FrozenParameters().check_runtime(run, context("x = 1\n")))
    assert [f.evidence.get("never_changed") for f in findings] == ([["0.weight"]] if reported else [])
