"""CC006 frozen-parameters: parameter tables from recorded traces, source snippets, a Trainer script."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest
from cc_testing import SCRIPTS, convcheck

from convcheck.checks.cc006_frozen_parameters import FrozenParameters, ParamTable, static_flag_sites
from convcheck.runtime.trace import RunTrace, load_events
from convcheck.static.context import StaticContext

NAMES = ["backbone.0.weight", "backbone.0.bias", "head.weight", "head.bias"]


def _ctx(source: str = "") -> StaticContext:
    source = textwrap.dedent(source)
    return StaticContext(path=Path("train.py"), source=source, tree=ast.parse(source))


def _trace(*, frozen_at_start=(), optimized=(0, 1, 2, 3), steps=4, grad=(0, 1, 2, 3), changed=None, frozen=None,
           outside=(), outside_grad=(), lr=0.1, flags=None) -> RunTrace:
    params = [{"id": i, "name": n, "requires_grad": i not in frozen_at_start} for i, n in enumerate(NAMES)]
    events = [
        {"ev": "process", "pid": 1, "role": "entry"},
        {"ev": "model", "cls": "Net", "params": params},
        {"ev": "optimizer", "opt": 0, "cls": "SGD", "groups": [{"params": list(optimized), "lr": lr}],
         "loc": ["train.py", 7]},
    ]
    if flags:
        events.append({"ev": "module_flags", "when": "model", "flags": flags})
    for n in range(1, steps + 1):
        events.append({
            "ev": "step", "opt": 0, "n": n, "backwards": 1, "lrs": [lr], "grad": list(grad),
            "grad_norms": [0.5] * len(grad), "changed": list(grad if changed is None else changed),
            "frozen": list(frozen_at_start if frozen is None else frozen), "outside": list(outside),
            "outside_grad": list(outside_grad),
        })
    return RunTrace(processes=[load_events(events)])


def _run(trace: RunTrace, source: str = "") -> list[tuple[str, str]]:
    check = FrozenParameters()
    return [(f.severity.value, f.message) for f in check.check_runtime(trace, _ctx(source))]


def test_everything_trains() -> None:
    assert _run(_trace()) == []


def test_deliberate_freeze_is_quiet() -> None:
    # The script freezes the backbone itself: correct code, nothing to say.
    trace = _trace(frozen_at_start=(0, 1), optimized=(2, 3), grad=(2, 3))
    assert _run(trace, "for p in model.backbone.parameters():\n    p.requires_grad = False\n") == []
    assert _run(trace, "model.backbone.requires_grad_(False)\n") == []


def test_frozen_without_any_freezing_line_is_a_warning() -> None:
    found = _run(_trace(frozen_at_start=(0, 1), optimized=(2, 3), grad=(2, 3)), "model = load()\n")
    assert [s for s, _ in found] == ["warning"]
    assert "no line of this script freezes anything" in found[0][1]


def test_unfrozen_after_a_filtered_optimizer_is_an_error() -> None:
    trace = _trace(frozen_at_start=(0, 1), optimized=(2, 3), grad=(2, 3), frozen=(), outside=(0, 1),
                   outside_grad=(0, 1))
    check = FrozenParameters()
    (finding,) = check.check_runtime(trace, _ctx())
    assert finding.severity.value == "error"
    assert finding.location is not None and finding.location.line == 7
    assert "frozen when the optimizer was built" in finding.message
    rows = {r["module"]: r for r in finding.evidence["modules"]}
    assert rows["backbone.0"]["not_in_optimizer"] == 2 and rows["head"]["trainable"] == 2


def test_replaced_head_is_an_error() -> None:
    # The optimizer holds params 4 and 5 (the old head): no module of the model has them.
    trace = _trace(optimized=(0, 1, 4, 5), grad=(0, 1), outside=(2, 3), outside_grad=(2, 3))
    (finding,) = [f for f in FrozenParameters().check_runtime(trace, _ctx()) if f.severity.value == "error"]
    assert "replaced after the optimizer was built" in finding.message
    assert finding.evidence["orphaned_in_optimizer"] == 2


def test_trainable_outside_every_optimizer_is_an_error() -> None:
    # The gradient was computed and never applied: proved by the run, so the default gate fails on it.
    found = _run(_trace(optimized=(2, 3), grad=(2, 3), outside=(0, 1), outside_grad=(0, 1)))
    assert [s for s, _ in found] == ["error"]
    assert "no optimizer holds them" in found[0][1]


def test_unused_module_and_zero_lr() -> None:
    found = _run(_trace(grad=(0, 1)))
    assert [s for s, _ in found] == ["warning"] and "`head` never received a gradient" in found[0][1]
    found = _run(_trace(lr=0.0, changed=()))
    assert [s for s, _ in found] == ["warning"] and "learning rate is 0" in found[0][1]


def test_module_attribute_confirmed_by_the_run() -> None:
    flags = [{"module": "backbone", "cls": "Sequential", "attr": "requires_grad", "value": False, "params": [0, 1]}]
    source = "model.backbone.requires_grad = False\n"
    check = FrozenParameters()
    ctx = _ctx(source)
    check.runtime_follows = True  # a run follows: static findings wait for it
    assert list(check.check_static(ctx)) == []
    (finding,) = check.check_runtime(_trace(flags=flags), ctx)
    assert finding.severity.value == "error" and finding.source == "static+runtime"
    assert finding.location is not None and finding.location.line == 1
    assert finding.evidence["parameters_still_training"] == ["backbone.0.weight", "backbone.0.bias"]


def test_table_without_sampled_states() -> None:
    trace = _trace()
    for event in trace.processes[0].events:
        for key in ("frozen", "outside", "outside_grad"):
            event.pop(key, None)
    table = ParamTable.from_trace(trace.processes[0])
    assert table.outside == [] and table.got_grad == {0, 1, 2, 3}


STATIC = '''
for p in model.backbone.parameters():
    p.requires_grad = False
for name, param in model.named_parameters():
    param.requires_grad = "fc" in name
model.fc.weight.requires_grad = False
model.requires_grad = False  # expect: warning
self.encoder.requires_grad = False  # expect: warning
p.require_grad = False  # expect: error
model.embed.require_grad = False  # expect: error
params[0].requires_grad = True
model.requires_grad_(False)
inputs.requires_grad = True
self.backbone.requires_grad = True  # expect: warning
for layer in model.layers:
    layer.requires_grad = False  # expect: warning
'''


def test_static_expectations() -> None:
    ctx = _ctx(STATIC)
    found = list(FrozenParameters().check_static(ctx))
    expected = [(n, line.rsplit("expect: ", 1)[1]) for n, line in enumerate(ctx.source.splitlines(), start=1)
                if "# expect:" in line]
    assert [(f.location.line, f.severity.value) for f in found] == expected
    assert [s.attr for s in static_flag_sites(ctx)] == ["requires_grad", "requires_grad", "require_grad",
                                                         "require_grad", "requires_grad", "requires_grad"]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [([], "error"), (["--head-first"], None), (["--head-first", "--ema"], None),
     (["--head-first", "--unused"], "warning")],
    ids=["replaced-head", "head-first", "ema", "unused-aux"],
)
def test_trainer_script(flags: list[str], expected: str | None) -> None:
    result = convcheck("run", "--format", "json", "--fail-on", "never", "--select", "CC006", "--steps", "3",
                       SCRIPTS / "cc006_trainer.py", *flags)
    assert result.code == 0, result.stderr
    assert [f["severity"] for f in result.findings("CC006")] == ([expected] if expected else [])


def test_zero_gradients_left_by_zero_grad_are_no_gradient() -> None:
    trace = _trace(steps=8)
    for event in trace.processes[0].events:
        if event["ev"] == "step":
            if event["n"] <= 5:
                event["grad_norms"] = [0.5, 0.5, 0.0, 0.0]  # head unused: its gradients stay zero
            else:
                event.pop("grad_norms")
                event.pop("changed")
    found = _run(trace)
    assert [s for s, _ in found] == ["warning"] and "`head` never received a gradient" in found[0][1]


def test_a_loss_that_gives_no_gradient_at_all_is_not_a_frozen_module() -> None:
    trace = _trace()
    for event in trace.processes[0].events:
        if event["ev"] == "step":
            event["grad_norms"] = [0.0] * 4
    assert _run(trace) == []


def test_unfreeze_after_the_run_with_a_filtered_optimizer() -> None:
    source = """\
    for p in model.backbone.parameters():
        p.requires_grad = False
    opt = torch.optim.SGD(filter(lambda p: p.requires_grad, model.parameters()), lr=0.1)
    for epoch in range(100):
        if epoch == 50:
            model.backbone.requires_grad_(True)
        train(epoch)
    """
    trace = _trace(frozen_at_start=(0, 1), optimized=(2, 3), grad=(2, 3))
    found = _run(trace, source)
    assert [s for s, _ in found] == ["error"] and "line 6 unfreezes parameters later" in found[0][1]
    # With add_param_group on unfreezing, the optimizer does get them.
    fixed = source.replace(
        "model.backbone.requires_grad_(True)",
        "model.backbone.requires_grad_(True); opt.add_param_group({'params': model.backbone.parameters()})",
    )
    assert _run(trace, fixed) == []


def test_unfreezing_the_head_before_the_filtered_optimizer_is_the_usual_recipe() -> None:
    source = """\
    model.requires_grad_(False)
    for p in model.head.parameters():
        p.requires_grad = True
    opt = torch.optim.SGD(filter(lambda p: p.requires_grad, model.parameters()), lr=0.1)
    """
    trace = _trace(frozen_at_start=(0, 1), optimized=(2, 3), grad=(2, 3))
    assert _run(trace, source) == []


def _cc006(script: str, *flags: str) -> list[dict]:
    result = convcheck("run", "--format", "json", "--fail-on", "never", SCRIPTS / script, *flags)
    assert result.code == 0, result.stdout + result.stderr
    return result.findings()


def test_layers_in_a_plain_list_are_cc016s_finding() -> None:
    # One bug, one finding: CC016 reports the layers kept in a plain list, and CC006 does not report their
    # parameters again as "in no optimizer".
    [finding] = _cc006("cc006_plain_list.py", "--bug")
    assert (finding["code"], finding["severity"], finding["location"]["line"]) == ("CC016", "error", 24)
    assert finding["message"].startswith("Net.forward calls modules `hidden[0]`, `hidden[1]` kept in Net.hidden "
                                         "(list), a plain Python container")
    assert "they receive gradients that are never applied" in finding["message"]
    assert finding["evidence"]["not_in_optimizer"] == ["hidden[0].weight", "hidden[0].bias", "hidden[1].weight",
                                                       "hidden[1].bias"]
    # Added to the optimizer by hand they train, but state_dict/.to/DDP still miss them; the frozen teacher
    # kept out of the model on purpose, and the nn.ModuleList twin, say nothing.
    [by_hand] = _cc006("cc006_plain_list.py", "--by-hand")
    assert by_hand["code"] == "CC016" and by_hand["severity"] == "warning"
    assert "state_dict() does not save them" in by_hand["message"]
    assert _cc006("cc006_plain_list.py") == []


def test_unregistered_layers_are_left_out_of_cc006s_findings() -> None:
    events = [
        {"ev": "process", "pid": 1, "role": "entry"},
        {"ev": "model", "cls": "Net", "params": [{"id": 0, "name": "out.weight", "requires_grad": True}]},
        {"ev": "unregistered_module", "cls": "Linear", "root": 0, "root_cls": "Net", "container": "hidden[0]",
         "holder": "Net.hidden (list)", "params": [{"id": 1, "name": "hidden[0].weight", "requires_grad": True}],
         "loc": ["train.py", 9]},
        {"ev": "optimizer", "opt": 0, "cls": "SGD", "groups": [{"params": [0], "lr": 0.1}], "loc": ["train.py", 7]},
        {"ev": "step", "opt": 0, "n": 1, "backwards": 1, "lrs": [0.1], "grad": [0], "grad_norms": [0.5],
         "changed": [0], "frozen": [], "outside": [1], "outside_grad": [1]},
    ]
    assert list(FrozenParameters().check_runtime(RunTrace(processes=[load_events(events)]), _ctx())) == []
    # The same parameter outside the optimizer, but owned by the model: CC006's own finding.
    events[1]["params"].append({"id": 1, "name": "hidden.0.weight", "requires_grad": True})
    found = list(FrozenParameters().check_runtime(RunTrace(processes=[load_events(events[:2] + events[3:])]), _ctx()))
    assert [(f.code, f.severity.value) for f in found] == [("CC006", "error")]


def test_an_optimizer_over_frozen_parameters_is_named_as_the_cause() -> None:
    [finding] = _cc006("cc006_frozen_the_wrong_part.py", "--bug")
    assert (finding["code"], finding["severity"], finding["location"]["line"]) == ("CC006", "error", 12)
    assert finding["message"].startswith("Every parameter the optimizer holds is frozen: module `2` (2 parameters, "
                                         "requires_grad=False)")
    assert "module `0` computes gradients for 2 parameters that no optimizer holds" in finding["message"]
    assert finding["evidence"]["frozen_in_optimizer"] == ["2.weight", "2.bias"]


def test_every_parameter_frozen_explains_the_crash_at_backward() -> None:
    params = [{"id": i, "name": n, "requires_grad": False} for i, n in enumerate(NAMES)]
    crash = "RuntimeError: element 0 of tensors does not require grad and does not have a grad_fn"
    events = [{"ev": "process", "pid": 1, "role": "entry"}, {"ev": "model", "cls": "Net", "params": params},
              {"ev": "backward", "n": 1, "step": 0, "loss": 0.7, "loc": ["train.py", 9], "graph": []},
              {"ev": "crash", "error": crash, "step": 0}]
    check = FrozenParameters()
    (finding,) = check.check_runtime(RunTrace(processes=[load_events(events)]),
                                     _ctx("model = Net()\nmodel.requires_grad_(False)\n"))
    assert finding.severity.value == "error" and finding.location.line == 2
    assert finding.message == ("Every parameter of `Net` (4 parameters) has requires_grad=False, so nothing can "
                               f"train: backward() failed (\"{crash}\").")
    # A frozen model whose input is what trains (style transfer) crashes for no such reason: nothing said.
    events[-1] = {"ev": "step", "opt": 0, "n": 1, "backwards": 1, "lrs": [0.1], "grad": []}
    assert [f.code for f in check.check_runtime(RunTrace(processes=[load_events(events)]), _ctx())] == []


def test_parts_run_by_the_models_own_method_are_one_model() -> None:
    result = convcheck("run", "--steps", "4", "--select", "CC006", "--format", "json",
                       SCRIPTS / "cc006_method_head_only.py")
    assert result.code == 1, result.stdout + result.stderr
    (finding,) = result.findings("CC006")
    assert (finding["severity"], finding["location"]["line"]) == ("error", 18)
    assert finding["message"] == ("module `backbone` computes gradients for 4 parameters, but no optimizer holds "
                                  "them: the module never trains.")
