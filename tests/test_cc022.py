"""CC022 checkpointing-without-input-grad: recorded checkpoint calls against the gradients the run saw, and runs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from cc_testing import SCRIPTS, convcheck

from convcheck.checks.cc006_frozen_parameters import FrozenParameters
from convcheck.checks.cc022_checkpointing_without_input_grad import CheckpointingWithoutInputGrad
from convcheck.runtime.trace import RunTrace, load_events
from convcheck.static.context import StaticContext

NAMES = ["embed.weight", "blocks.0.weight", "blocks.0.bias", "head.weight"]


def _ctx(source: str = "") -> StaticContext:
    return StaticContext(path=Path("train.py"), source=source, tree=ast.parse(source))


def _trace(*, use_reentrant=True, input_grad=False, grad_enabled=True, frozen=(0,), grad=(3,), steps=4,
           inside=(1, 2), output=None) -> RunTrace:
    params = [{"id": i, "name": n, "requires_grad": i not in frozen} for i, n in enumerate(NAMES)]
    trainable = [i for i in range(4) if i not in frozen]
    reentrant = True if use_reentrant is None else use_reentrant
    events = [
        {"ev": "process", "pid": 1, "role": "entry"},
        {"ev": "model", "cls": "TinyLM", "params": params},
        {"ev": "optimizer", "opt": 0, "cls": "AdamW", "groups": [{"params": trainable, "lr": 1e-3}],
         "loc": ["train.py", 30]},
    ]
    for _ in range(2):  # one call per block, same line
        events.append({"ev": "activation_checkpoint", "use_reentrant": use_reentrant, "reentrant": reentrant,
                       "sequential": False, "grad_enabled": grad_enabled, "n_tensors": 1,
                       "input_requires_grad": input_grad,
                       "output_requires_grad": input_grad or not reentrant if output is None else output,
                       "function": "Sequential", "params": [p for p in inside if p not in frozen],
                       "loc": ["train.py", 22], "step": 0})
    events.append({"ev": "backward", "n": 1, "step": 0, "loss": 2.3, "loc": ["train.py", 33]})
    for n in range(1, steps + 1):
        events.append({"ev": "step", "opt": 0, "n": n, "backwards": 1, "lrs": [1e-3], "grad": list(grad),
                       "grad_norms": [0.5] * len(grad), "changed": list(grad), "frozen": list(frozen)})
    return RunTrace(processes=[load_events(events)])


def _run(trace: RunTrace) -> list:
    return list(CheckpointingWithoutInputGrad().check_runtime(trace, _ctx()))


def test_reentrant_over_inputs_without_grad_is_an_error() -> None:
    [finding] = _run(_trace())
    assert (finding.severity.value, finding.location.line) == ("error", 22)
    assert finding.message == (
        "checkpoint(Sequential, ...) at train.py:22 passes use_reentrant=True and none of its tensor inputs requires "
        "grad: its output does not require grad and backward never reaches the 2 trainable parameters inside "
        "(`blocks.0.weight`, `blocks.0.bias`): they received no gradient in 4 optimizer steps and do not train.")
    assert finding.evidence["calls"] == 2 and finding.evidence["never_given_a_gradient"] == ["blocks.0.weight",
                                                                                             "blocks.0.bias"]


def test_the_default_variant_is_named_as_the_default() -> None:
    [finding] = _run(_trace(use_reentrant=None))
    assert finding.severity.value == "error"
    assert "does not pass use_reentrant, so torch runs the reentrant variant, and none of its" in finding.message


@pytest.mark.parametrize("change", [
    {"use_reentrant": False},       # the non-reentrant variant gives gradients whatever the inputs
    {"input_grad": True},           # an input that requires grad: the reentrant variant works
    {"grad_enabled": False},        # evaluation under no_grad
    {"frozen": (0, 1, 2)},          # a frozen part checkpointed: nothing inside should train
])
def test_correct_uses_are_quiet(change: dict) -> None:
    assert _run(_trace(**change)) == []


def test_parameters_that_get_gradients_elsewhere_are_info() -> None:
    [finding] = _run(_trace(grad=(1, 2, 3)))
    assert finding.severity.value == "info"
    assert "none from this call: its share of their gradient is missing" in finding.message


def test_no_optimizer_step_leaves_a_warning() -> None:
    [finding] = _run(_trace(steps=0))
    assert finding.severity.value == "warning"
    assert "(the run took no optimizer step to confirm it)" in finding.message


def test_cc006_leaves_the_checkpointed_layers_to_cc022() -> None:
    freezes = _ctx("model.embed.requires_grad_(False)\n")
    assert list(FrozenParameters().check_runtime(_trace(), freezes)) == []
    # The same layers without a gradient and no checkpoint call: CC006's own finding.
    trace = _trace(use_reentrant=False)
    [finding] = FrozenParameters().check_runtime(trace, freezes)
    assert finding.code == "CC006" and "never received a gradient" in finding.message


@pytest.mark.slow
def test_features_from_no_grad_into_checkpoint_sequential() -> None:
    def run(*flags: str) -> list[dict]:
        result = convcheck("run", "--format", "json", "--fail-on", "never",
                           SCRIPTS / "cc022_features_then_sequential.py", *flags)
        assert result.code == 0, result.stdout + result.stderr
        return result.findings()

    [finding] = run()
    assert (finding["code"], finding["severity"], finding["location"]["line"]) == ("CC022", "error", 23)
    assert finding["message"].startswith("checkpoint_sequential(...) at ")
    assert "does not pass use_reentrant, so torch runs the reentrant variant" in finding["message"]
    assert finding["evidence"]["sequential"] is True and finding["evidence"]["use_reentrant"] is None
    assert run("--non-reentrant") == []
    # The reentrant variant's own backward inside the script's backward is not a second backward (CC003 quiet).
    assert run("--input-grad") == []
