"""CC010 softmax-before-cross-entropy: loss graphs from recorded traces, source sites, and a script in another style."""

from __future__ import annotations

import pytest
from cc_testing import SCRIPTS, convcheck
from static_expect import context

from convcheck.checks.cc010_softmax_before_cross_entropy import SoftmaxBeforeCrossEntropy, observe, static_sites
from convcheck.runtime.trace import RunTrace, load_events


def chain(*names: str) -> list[dict]:
    """A graph that is one chain of nodes from the loss down."""
    return [{"name": name, "depth": i, "parent": i - 1} for i, name in enumerate(names)]


CE_ON_SOFTMAX = chain("NllLossBackward0", "LogSoftmaxBackward0", "SoftmaxBackward0", "AddmmBackward0")
CE_ON_LOGITS = chain("NllLossBackward0", "LogSoftmaxBackward0", "AddmmBackward0", "ReluBackward0")


def test_graph_patterns() -> None:
    assert observe(CE_ON_SOFTMAX) == [("cross_entropy", "softmax")]
    assert observe(CE_ON_LOGITS) == []
    assert observe(chain("NllLossBackward0", "LogSoftmaxBackward0", "ViewBackward0", "LogSoftmaxBackward0")) == [
        ("cross_entropy", "log_softmax")]
    assert observe(chain("NllLossBackward0", "LogSoftmaxBackward0", "AddmmBackward0")) == []
    assert observe(chain("NllLossBackward0", "SoftmaxBackward0")) == [("nll_loss", "softmax")]
    assert observe(chain("MeanBackward0", "BinaryCrossEntropyWithLogitsBackward0", "SqueezeBackward1",
                         "SigmoidBackward0")) == [("bce_with_logits", "sigmoid")]
    # A sigmoid deeper in the network (a hidden activation) is not the loss's input.
    assert observe(chain("BinaryCrossEntropyWithLogitsBackward0", "AddmmBackward0", "SigmoidBackward0")) == []
    # A softmax used in an auxiliary term next to a correct cross-entropy is no finding.
    graph = [{"name": "AddBackward0", "depth": 0, "parent": -1},
             {"name": "NllLossBackward0", "depth": 1, "parent": 0},
             {"name": "SumBackward0", "depth": 1, "parent": 0},
             {"name": "LogSoftmaxBackward0", "depth": 2, "parent": 1},
             {"name": "SoftmaxBackward0", "depth": 2, "parent": 2}]
    assert observe(graph) == []


def trace(graph: list[dict], backwards: int = 3) -> RunTrace:
    events = [{"ev": "process"}]
    for n in range(1, backwards + 1):
        events += [{"ev": "backward", "n": n, "step": n - 1, "loss": 1.5, "loc": ["train.py", 20], "graph": graph},
                   {"ev": "step", "opt": 0, "n": n, "backwards": 1, "grad": [0]}]
    return RunTrace(processes=[load_events(events)])


SOURCE = """
    import torch
    import torch.nn as nn
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    criterion = nn.CrossEntropyLoss()
    for x, y in loader:
        out = model(x)
        acc = (out.softmax(1).argmax(1) == y).float().mean()
        probs = torch.softmax(out, dim=1)
        loss = criterion(probs, y)
        loss.backward()
"""


def test_softmax_into_cross_entropy_points_at_the_softmax() -> None:
    [finding] = SoftmaxBeforeCrossEntropy().check_runtime(trace(CE_ON_SOFTMAX), context(SOURCE))
    assert finding.severity.value == "error"
    assert (finding.location.path, finding.location.line) == ("train.py", 9)
    assert finding.evidence["graph_path"] == ["NllLossBackward0", "LogSoftmaxBackward0", "SoftmaxBackward0"]
    assert "3 of 3 sampled backward() calls" in finding.message


def test_without_a_source_site_the_backward_is_the_location() -> None:
    [finding] = SoftmaxBeforeCrossEntropy().check_runtime(trace(CE_ON_SOFTMAX), context("x = 1\n"))
    assert finding.location.line == 20


def test_logits_are_quiet() -> None:
    assert list(SoftmaxBeforeCrossEntropy().check_runtime(trace(CE_ON_LOGITS), context(SOURCE))) == []


def test_log_softmax_into_cross_entropy_is_info() -> None:
    graph = chain("NllLossBackward0", "LogSoftmaxBackward0", "LogSoftmaxBackward0", "AddmmBackward0")
    [finding] = SoftmaxBeforeCrossEntropy().check_runtime(trace(graph), context("x = 1\n"))
    assert finding.severity.value == "info"
    assert "idempotent" in finding.message


def test_static_sites_rank_the_loss_input_first() -> None:
    sites = static_sites(context("""
        import torch.nn as nn
        import torch.nn.functional as F
        class Net(nn.Module):
            def __init__(self):
                self.head = nn.Sequential(nn.Linear(4, 4), nn.Softmax(dim=1))
            def forward(self, x):
                return F.softmax(self.head(x), dim=-1)
        loss = F.cross_entropy(F.softmax(out, 1), y)
    """), "softmax")
    assert [(s.line, s.how) for s in sites] == [
        (9, "passed straight to the loss"), (8, "returned by the model's forward()"), (6, "an `nn.Softmax` layer")]


def test_sigmoid_returned_by_forward_with_bce_with_logits() -> None:
    result = convcheck("run", "--format", "json", "--fail-on", "never", "--steps", "3", "--select", "CC010",
                       SCRIPTS / "cc010_binary.py")
    [finding] = result.findings("CC010")
    assert (finding["severity"], finding["location"]["line"]) == ("error", 17)
    assert finding["evidence"]["loss"] == "bce_with_logits"


# -- static --------------------------------------------------------------------------------------------

STATIC_CASES = {
    "functional": """
        import torch.nn.functional as F
        loss = F.cross_entropy(F.softmax(out, dim=1), y)  # expect: CC010 warning
    """,
    "criterion_and_variable": """
        import torch
        import torch.nn as nn
        criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
        probs = torch.softmax(model(x), 1)
        loss = criterion(probs, y)  # expect: CC010 warning
    """,
    "bce_with_logits_on_sigmoid": """
        import torch.nn as nn
        loss = nn.BCEWithLogitsLoss()(out.sigmoid(), y)  # expect: CC010 warning
    """,
    "logits": """
        import torch.nn as nn
        criterion = nn.CrossEntropyLoss()
        loss = criterion(model(x), y)
        acc = (model(x).softmax(1).argmax(1) == y).float().mean()
    """,
    "bce_on_sigmoid_is_right": """
        import torch
        import torch.nn as nn
        loss = nn.BCELoss()(torch.sigmoid(out), y)
    """,
}


@pytest.mark.parametrize("name", sorted(STATIC_CASES))
def test_static(name: str) -> None:
    from static_expect import expected, static_findings

    source = STATIC_CASES[name]
    assert static_findings(SoftmaxBeforeCrossEntropy(), source) == expected(source)


def test_static_finding_gives_way_to_the_run() -> None:
    check = SoftmaxBeforeCrossEntropy()
    check.runtime_follows = True
    source = context(STATIC_CASES["functional"])
    assert list(check.check_static(source)) == []
    assert [f.source for f in check.check_runtime(trace(CE_ON_SOFTMAX), source)] == ["runtime"]
