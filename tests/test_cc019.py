"""CC019 mask-masks-nothing: recorded attention masks against the loss's shape, and runs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from cc_testing import SCRIPTS, convcheck

from convcheck.checks.cc019_mask_masks_nothing import MaskMasksNothing
from convcheck.runtime.trace import RunTrace, load_events
from convcheck.static.context import StaticContext

LM_GRAPH = [{"name": "NllLossBackward0", "depth": 0, "parent": -1,
             "attrs": {"reduction": 1, "self": {"shape": [64, 50]}, "target": {"shape": [64]}}},
            {"name": "ViewBackward0", "depth": 1, "parent": 0, "attrs": {"self_sym_sizes": [4, 16, 50]}}]
CLASSIFIER_GRAPH = [{"name": "NllLossBackward0", "depth": 0, "parent": -1,
                     "attrs": {"reduction": 1, "self": {"shape": [64, 2]}, "target": {"shape": [64]}}}]


def _trace(*, shape=(1, 1, 16, 16), nothing=(True, True, True), graph=LM_GRAPH, kind="masked_fill") -> RunTrace:
    events = [{"ev": "process", "pid": 1, "role": "entry"}]
    for step, empty in enumerate(nothing):
        events.append({"ev": "attention_mask", "kind": kind, "mask_shape": list(shape), "q_len": shape[-2],
                       "k_len": shape[-1], "square": shape[-1] == shape[-2] > 1,
                       "shared": all(n == 1 for n in shape[:-2]), "masks_nothing": empty,
                       "fill": "-inf" if kind == "masked_fill" else None, "dtype": "torch.bool",
                       "loc": ["model.py", 40], "step": step})
        events.append({"ev": "backward", "n": step + 1, "step": step, "loss": 3.0 - step, "loc": ["train.py", 9],
                       "graph": graph})
        events.append({"ev": "step", "opt": 0, "n": step + 1, "backwards": 1, "lrs": [0.1], "grad": [0]})
    return RunTrace(processes=[load_events(events)])


def _run(trace: RunTrace) -> list:
    ctx = StaticContext(path=Path("train.py"), source="", tree=ast.parse(""))
    return list(MaskMasksNothing().check_runtime(trace, ctx))


def test_a_causal_shaped_mask_that_masks_nothing_under_a_next_token_loss_is_a_warning() -> None:
    [finding] = _run(_trace())
    assert (finding.severity.value, finding.location.path, finding.location.line) == \
        ("warning", "model.py", 40)
    assert finding.message == (
        "At model.py:40, masked_fill(1×1×16×16 mask, -inf) is given a mask that is False everywhere in all 3 sampled "
        "calls (steps 1–3): a square mask shared by the whole batch, shaped like a causal mask over 16 positions, "
        "that masks nothing, so every position attends to the positions after it. The model is trained on a "
        "token-level loss (cross-entropy over 64 positions, 16 per sequence): predicting the next token, it can "
        "copy it, so the loss falls fast and the model cannot generate.")
    assert (finding.evidence["first_loss"], finding.evidence["last_loss"]) == (3.0, 1.0)


def test_sdpa_masks_are_judged_alike() -> None:
    [finding] = _run(_trace(kind="sdpa", shape=(16, 16)))
    assert finding.severity.value == "warning"
    assert "scaled_dot_product_attention's attn_mask (torch.bool, 16×16, is_causal=False) is True everywhere" \
        in finding.message


def test_without_a_token_level_loss_it_is_info() -> None:
    [finding] = _run(_trace(graph=CLASSIFIER_GRAPH))
    assert finding.severity.value == "info"
    assert "No token-level loss was seen" in finding.message
    # A masked-language-model loss counts a few positions only: such a model attends both ways.
    masked_lm = [{**LM_GRAPH[0], "attrs": {**LM_GRAPH[0]["attrs"], "counted": 10}}, LM_GRAPH[1]]
    [finding] = _run(_trace(graph=masked_lm))
    assert finding.severity.value == "info"


@pytest.mark.parametrize("change", [
    {"nothing": (True, False, True)},    # it masked something in one call: a real mask
    {"nothing": (True,)},                # one call is no pattern
    {"shape": (4, 1, 16, 16)},           # one mask per sequence: a padding mask, empty when nothing is padded
    {"shape": (1, 1, 1, 16)},            # a key-padding mask
    {"shape": (1, 1, 16, 20)},           # not square
])
def test_masks_that_are_not_an_empty_causal_mask_are_quiet(change: dict) -> None:
    assert _run(_trace(**change)) == []


@pytest.mark.slow
def test_an_sdpa_mask_of_ones() -> None:
    def run(*flags: str) -> list[dict]:
        result = convcheck("run", "--format", "json", "--fail-on", "never", SCRIPTS / "cc019_sdpa_mask.py", *flags)
        assert result.code == 0, result.stdout + result.stderr
        return result.findings()

    [finding] = run()
    assert (finding["code"], finding["severity"], finding["location"]["line"]) == ("CC019", "warning", 26)
    assert finding["evidence"]["mask_shape"] == [12, 12] and finding["evidence"]["token_level_loss"] is True
    assert run("--fixed") == []
    assert run("--encoder") == []
