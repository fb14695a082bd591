"""CC016 unregistered-submodule: recorded traces, source snippets, the probe's state_dict summaries, and runs."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest
import torch
from cc_testing import SCRIPTS, convcheck

from convcheck.checks.cc016_unregistered_submodule import UnregisteredSubmodule, plain_layer_containers
from convcheck.runtime.probe import _state_dict_summaries
from convcheck.runtime.trace import RunTrace, load_events
from convcheck.static.context import StaticContext

HEADER = "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n"


def _ctx(source: str = "") -> StaticContext:
    source = textwrap.dedent(source)
    return StaticContext(path=Path("train.py"), source=source, tree=ast.parse(source))


def _trace(*, optimized=(0,), frozen=(), root=0, saves=(), steps=3) -> RunTrace:
    """A model owning ``out.weight`` (id 0) that calls two layers of a plain list (ids 1 and 2)."""
    layer_params = [{"id": 1, "name": "hidden[0].weight", "requires_grad": 1 not in frozen},
                    {"id": 2, "name": "hidden[1].weight", "requires_grad": 2 not in frozen}]
    events = [{"ev": "process", "pid": 1, "role": "entry"}]
    if root is not None:
        events.append({"ev": "model", "cls": "Net", "params": [{"id": 0, "name": "out.weight", "requires_grad": True}]})
    for n, param in enumerate(layer_params):
        events.append({"ev": "unregistered_module", "cls": "Linear", "root": root, "root_cls": "Net",
                       "container": f"hidden[{n}]", "holder": "Net.hidden (list)", "params": [param],
                       "loc": ["train.py", 12]})
    events.append({"ev": "optimizer", "opt": 0, "cls": "SGD", "groups": [{"params": list(optimized), "lr": 0.1}],
                   "loc": ["train.py", 20]})
    outside = [p for p in (0, 1, 2) if p not in optimized and p not in frozen]
    for n in range(1, steps + 1):
        events.append({"ev": "step", "opt": 0, "n": n, "backwards": 1, "lrs": [0.1], "grad": list(optimized),
                       "grad_norms": [0.5] * len(optimized), "changed": list(optimized), "frozen": list(frozen),
                       "outside": outside, "outside_grad": outside})
    for n_keys, keys in saves:
        events.append({"ev": "save", "path": "ckpt.pt", "redirected_to": None, "step": steps, "loc": ["train.py", 30],
                       "state_dicts": [{"path": [], "n_keys": n_keys, "keys": keys}]})
    return RunTrace(processes=[load_events(events)])


def _run(trace: RunTrace, source: str = "", runtime_follows: bool = True) -> list:
    check = UnregisteredSubmodule()
    check.runtime_follows = runtime_follows
    found = list(check.check_static(_ctx(source)))
    return found + list(check.check_runtime(trace, _ctx(source)))


def test_layers_outside_every_optimizer_are_an_error() -> None:
    [finding] = _run(_trace())
    assert (finding.severity.value, finding.source, finding.location.line) == ("error", "runtime", 12)
    assert finding.message == (
        "Net.forward calls modules `hidden[0]`, `hidden[1]` kept in Net.hidden (list), a plain Python container, so "
        "they are not registered as submodules: 2 parameters are missing from Net.parameters() and so from the "
        "optimizer — they receive gradients that are never applied; state_dict(), .to(device) and DDP miss them too.")
    assert finding.evidence["not_in_optimizer"] == ["hidden[0].weight", "hidden[1].weight"]


def test_layers_added_to_the_optimizer_by_hand_are_a_warning() -> None:
    [finding] = _run(_trace(optimized=(0, 1, 2)))
    assert finding.severity.value == "warning"
    assert "the optimizer holds their 2 parameters (added by hand), but Net.state_dict() does not save them" \
        in finding.message


def test_a_saved_checkpoint_without_the_layers_is_an_error() -> None:
    # The model's own state_dict (every key it owns is there) was saved: the trained layers are lost.
    [finding] = _run(_trace(optimized=(0, 1, 2), saves=[(1, ["out.weight"])]))
    assert finding.severity.value == "error" and finding.evidence["saved"][0]["n_keys"] == 1
    assert finding.message.endswith("torch.save at train.py:30 saved 1 key of Net.state_dict(), none of them from "
                                    "these layers (2 parameters): the checkpoint lacks them.")
    # Another dict (an optimizer's, another model's) is not this model's checkpoint.
    [other] = _run(_trace(optimized=(0, 1, 2), saves=[(1, ["encoder.weight"])]))
    assert other.severity.value == "warning" and "saved" not in other.evidence


def test_a_model_that_owns_nothing_saves_zero_keys() -> None:
    [finding] = _run(_trace(root=None, optimized=(1, 2), saves=[(0, [])]))
    assert finding.severity.value == "error"
    assert "saved 0 keys of Net.state_dict()" in finding.message


def test_frozen_layers_kept_out_on_purpose_are_quiet() -> None:
    assert _run(_trace(frozen=(1, 2))) == []


def test_the_source_and_the_run_give_one_finding_at_the_definition() -> None:
    source = HEADER + textwrap.dedent("""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden = [nn.Linear(4, 4), nn.Linear(4, 4)]
            self.out = nn.Linear(4, 1)

        def forward(self, x):
            for layer in self.hidden:
                x = layer(x)
            return self.out(x)
    """)
    [finding] = _run(_trace(), source)
    assert (finding.source, finding.location.line, finding.severity.value) == ("static+runtime", 8, "error")
    assert finding.evidence["called_at"] == "train.py:12"
    # The run trained and saw no such layer (frozen, or registered some other way): the source's suspicion goes.
    assert _run(_trace(frozen=(1, 2)), source) == []
    # The run never trained (it crashed or stopped first): the source's finding stands, as a warning.
    [static] = _run(_trace(frozen=(1, 2), steps=0), source)
    assert (static.source, static.severity.value, static.location.line) == ("static", "warning", 8)
    assert static.message == (
        "`Net.hidden` is a plain list of layers (`nn.Linear`) that Net.forward uses: they are not submodules, so "
        "Net.parameters(), the optimizer, state_dict(), .to(device) and DDP miss them (from the source).")
    assert static.evidence["evidence"] == "from the source"
    # --static-only: the source's finding at once.
    [alone] = UnregisteredSubmodule().check_static(_ctx(source))
    assert alone.severity.value == "warning"


BUGGY = {
    "comprehension": """
        self.layers = [nn.Linear(4, 4) for _ in range(3)]
    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x
    """,
    "dict": """
        self.heads = {"a": nn.Linear(4, 2), "b": nn.Linear(4, 3).to("cpu")}
    def forward(self, x):
        return {k: head(x) for k, head in self.heads.items()}
    """,
    "tuple": """
        self.pair = (nn.Conv2d(3, 3, 3), nn.BatchNorm2d(3))
    def forward(self, x):
        return self.pair[1](self.pair[0](x))
    """,
    "append": """
        self.blocks = []
        for _ in range(3):
            self.blocks.append(nn.Linear(4, 4))
    def forward(self, x):
        return self.blocks[-1](x)
    """,
    "grown by concatenation": """
        self.layers = []
        for _ in range(3):
            self.layers = self.layers + [Block()]
    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x
    """,
    "local list": """
        layers = []
        for _ in range(3):
            layers.append(Block())
        self.layers = layers
    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x
    """,
}

QUIET = {
    "activations and functions": """
        self.acts = [nn.ReLU(), nn.Tanh(), nn.Dropout(0.1)]
        self.fns = [F.relu, torch.tanh]
        self.sizes = [4, 8]
        self.fc = nn.Linear(4, 4)
    def forward(self, x):
        for act, fn in zip(self.acts, self.fns):
            x = fn(act(self.fc(x)))
        return x * self.sizes[0]
    """,
    "a list of registered layers": """
        self.layers = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])
        self.blocks = list(self.layers)
        self.first = nn.Linear(4, 4)
        self.order = [self.first]
    def forward(self, x):
        for block in self.order + self.blocks:
            x = block(x)
        return x
    """,
    "wrapped later": """
        self.layers = [nn.Linear(4, 4) for _ in range(3)]
        self.layers = nn.ModuleList(self.layers)
    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x
    """,
    "local list wrapped": """
        layers = [nn.Linear(4, 4) for _ in range(3)]
        self.layers = layers
        self.net = nn.Sequential(*layers)
    def forward(self, x):
        return self.layers[0](x)
    """,
    "registered one by one": """
        self.layers = [nn.Linear(4, 4) for _ in range(3)]
        for i, layer in enumerate(self.layers):
            self.add_module(f"layer{i}", layer)
    def forward(self, x):
        return self.layers[0](x)
    """,
    "never used": """
        self.spare = [nn.Linear(4, 4)]
    def forward(self, x):
        return x
    """,
    "activations collected in forward": """
        self.fc = nn.Linear(4, 4)
        self.seen = []
    def forward(self, x):
        self.seen.append(x)
        return self.fc(self.seen[-1])
    """,
}


def _snippet(body: str) -> str:
    body = textwrap.indent(textwrap.dedent(body), "    ")
    return (HEADER + "class Block(nn.Module):\n    pass\n\nclass Net(nn.Module):\n    def __init__(self):\n"
            "        super().__init__()\n" + body)


@pytest.mark.parametrize("case", sorted(BUGGY))
def test_plain_containers_of_layers_in_the_source(case: str) -> None:
    [site] = plain_layer_containers(_ctx(_snippet(BUGGY[case])))
    assert site.cls == "Net" and site.used_in == "forward"


@pytest.mark.parametrize("case", sorted(QUIET))
def test_correct_containers_are_quiet(case: str) -> None:
    assert plain_layer_containers(_ctx(_snippet(QUIET[case]))) == []


def test_a_module_without_forward_keeps_its_source_finding_after_training() -> None:
    # Each layer trains on its own (its own optimizer) and the model calls them from other methods: no forward
    # of the model runs, so the run cannot see the layers it does not own; state_dict() of the model is empty.
    source = HEADER + textwrap.dedent("""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = []
            for _ in range(2):
                self.layers = self.layers + [nn.Linear(4, 4)]

        def predict(self, x):
            for layer in self.layers:
                x = layer(x)
            return x
    """)
    [finding] = _run(_trace(frozen=(1, 2)), source)
    assert (finding.source, finding.severity.value, finding.location.line) == ("static", "warning", 8)
    assert finding.evidence["used_in"] == "predict" and finding.evidence["has_forward"] is False


def test_a_class_that_is_no_module_is_quiet() -> None:
    source = HEADER + textwrap.dedent("""
    class Ensemble:
        def __init__(self):
            self.members = [nn.Linear(4, 4) for _ in range(3)]
        def __call__(self, x):
            return sum(m(x) for m in self.members)
    """)
    assert plain_layer_containers(_ctx(source)) == []


def test_an_empty_state_dict_is_summarized_only_for_saves() -> None:
    class Owner(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = [torch.nn.Linear(2, 2)]

    state = Owner().state_dict()
    assert _state_dict_summaries({"model": state}, torch, empty=True) == [{"path": ["model"], "n_keys": 0, "keys": []}]
    assert _state_dict_summaries(state, torch) == []
    assert _state_dict_summaries({}, torch, empty=True) == []  # a plain empty dict is no state_dict


@pytest.mark.slow
def test_a_dict_of_heads_and_a_model_that_owns_nothing() -> None:
    def run(*flags: str) -> list[dict]:
        result = convcheck("run", "--format", "json", "--fail-on", "never", SCRIPTS / "cc016_dict_of_heads.py", *flags)
        assert result.code == 0, result.stdout + result.stderr
        return result.findings()

    [heads] = run()
    assert (heads["code"], heads["severity"], heads["location"]["line"], heads["source"]) == \
        ("CC016", "error", 23, "runtime")
    assert heads["message"].startswith("MultiTask.forward calls modules `heads['age']`, `heads['kind']` kept in "
                                       "MultiTask.heads (dict), a plain Python container: the optimizer holds their 4")
    assert "cc016_dict_of_heads.py:48 saved 2 keys of MultiTask.state_dict()" in heads["message"]
    [stack] = run("--stack")
    assert (stack["code"], stack["severity"], stack["location"]["line"], stack["source"]) == \
        ("CC016", "error", 29, "static+runtime")
    assert "saved 0 keys of Stack.state_dict()" in stack["message"]
    assert run("--fixed") == []
