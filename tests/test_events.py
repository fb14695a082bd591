"""The trace's event kinds are typed in one place: every kind the probe writes is declared, real traces fit
their schemas, and a line that breaks its kind's schema is left out with a message that names the field."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
from cc_testing import EXAMPLES, REPO, convcheck, parse_expectations
from typing_extensions import NotRequired, TypedDict

from convcheck.runtime import events
from convcheck.runtime.events import SCHEMAS, register_event_schema, validate_event
from convcheck.runtime.trace import read_trace_dir

STEP = {"ev": "step", "opt": 0, "n": 1, "backwards": 1, "lrs": [0.1], "grad": [0, 1], "loc": ["train.py", 12]}


def _written_kinds() -> set[str]:
    """Every literal kind passed to an ``emit(...)`` call in the runtime's source."""
    kinds = set()
    for path in (REPO / "convcheck").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "emit"
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                kinds.add(node.args[0].value)
    return kinds


def test_every_kind_the_runtime_writes_has_a_schema_and_every_schema_is_written() -> None:
    written = _written_kinds()
    assert len(written) >= 40
    assert sorted(written - set(SCHEMAS)) == []
    assert sorted(set(SCHEMAS) - written) == []


def test_each_schema_documents_its_kind_and_declares_it() -> None:
    for kind, schema in SCHEMAS.items():
        assert schema.__doc__ and schema.__doc__.strip(), kind
        assert typing.get_args(typing.get_type_hints(schema)["ev"]) == (kind,)


@pytest.mark.parametrize("event", [
    STEP,
    {**STEP, "loc": None, "lrs": [1, None, "tensor([0.1])"], "update_norms": [0.5, None], "update_ratios": [0.01, None],
     "closure": True},
    {"ev": "gradflow", "step": 1, "root": 0, "loc": ["t.py", 3], "layers": [
        {"name": "0", "cls": "Linear", "kind": "weight", "calls": 1, "zero_calls": 0, "measured": 1, "param": 0,
         "trainable": True},
        {"name": "1", "cls": "ReLU", "kind": "relu", "calls": 2, "zero_calls": 2, "measured": 2, "dead_units": 1.0,
         "batch": 32}]},
    {**STEP, "param_norms": [1, 2.5, float("nan")], "extra_field_of_a_newer_writer": {"a": 1}},
    {"ev": "backward", "n": 1, "step": 0, "loss": float("inf"), "loc": None,
     "graph": [{"name": "MeanBackward0", "depth": 0, "parent": -1, "attrs": {"self_sym_sizes": [4, 2]}}],
     "stale_grads": {"opt": 0, "present": 2, "of": 2, "norm": 0}},
    {"ev": "warning", "category": "UserWarning", "message": "m", "origin": ["/x/f.py", 3], "loc": ["t.py", None],
     "step": 0},
    {"ev": "a_kind_nobody_declared", "n": "anything"},
])
def test_fitting_events_and_undeclared_kinds_are_usable(event: dict) -> None:
    assert validate_event(event) is None


@pytest.mark.parametrize("event, problem", [
    ({**STEP, "n": "1"}, "field 'n' is str, not int"),
    ({**STEP, "n": True}, "field 'n' is bool, not int"),
    ({**STEP, "n": 1.0}, "field 'n' is float, not int"),
    ({**STEP, "loc": 12}, "field 'loc' is int, not [file, line] or None"),
    ({**STEP, "loc": ["train.py", 12, 3]}, "field 'loc' is not [file, line] or None: ['train.py', 12, 3]"),
    ({**STEP, "grad": [0, "1"]}, "field 'grad' is not list[int]: [1] is str"),
    ({**STEP, "update_norms": [1.0, "x"]}, "field 'update_norms' is not list[float | None]: [1] is str"),
    ({"ev": "gradflow", "step": 1, "root": None, "loc": None,
      "layers": [{"name": "0", "cls": "Tanh", "kind": "tanh", "calls": 1, "zero_calls": 0, "measured": 1}]},
     "field 'layers' is not list[GradflowLayer]: [0]['kind'] is 'tanh'"),
    ({"ev": "backward", "n": 1, "step": 0, "loss": "0.5", "loc": None}, "field 'loss' is str, not float or None"),
    ({"ev": "backward", "n": 1, "step": 0, "loss": None, "loc": None, "stale_grads": {"opt": 0, "present": 1, "of": 1}},
     "field 'stale_grads' is not StaleGrads: ['norm'] is missing"),
    ({"ev": "backward", "n": 1, "step": 0, "loss": None, "loc": None,
      "graph": [{"name": "MeanBackward0", "depth": 0, "parent": None}]},
     "field 'graph' is not list[GraphNode]: [0]['parent'] is null"),
    ({"ev": "zero_grad", "kind": "optimizer", "step": 0, "opt": None, "loc": None},
     "an event of kind 'zero_grad' without its field 'backwards'"),
    # A wrong value is told before a missing field.
    ({"ev": "end", "status": 0}, "field 'status' is int, not str"),
])
def test_a_known_kind_that_breaks_its_schema_is_named_by_its_field(event: dict, problem: str) -> None:
    assert validate_event(event) == problem


class _LrFinderEvent(TypedDict):
    """A learning-rate sweep's point (written by a third-party recorder)."""

    lr: float
    loss: float | None
    note: NotRequired[str]


@pytest.fixture
def plugin_kind() -> Iterator[str]:
    kind = "lr_finder_point"
    yield kind
    SCHEMAS.pop(kind, None)
    events._adapters.pop(kind, None)


def test_a_plugin_declares_its_kind_and_its_damaged_lines_are_left_out(plugin_kind: str, tmp_path: Path) -> None:
    damaged = {"ev": plugin_kind, "lr": "high", "loss": 1.0}
    assert validate_event(damaged) is None  # undeclared: kept as written

    register_event_schema(plugin_kind, _LrFinderEvent)
    register_event_schema(plugin_kind, _LrFinderEvent)  # again: nothing changes

    assert validate_event({"ev": plugin_kind, "lr": 1, "loss": None}) is None
    assert validate_event(damaged) == "field 'lr' is str, not float"
    (tmp_path / "trace-host-41.jsonl").write_text(
        json.dumps({"ev": plugin_kind, "lr": 0.1, "loss": 2.0}) + "\n" + json.dumps(damaged) + "\n")
    trace = read_trace_dir(tmp_path)
    assert [len(p.events) for p in trace.processes] == [1]
    assert trace.damaged == ["trace-host-41.jsonl:2: field 'lr' is str, not float; the line was left out"]


def test_a_kind_cannot_be_declared_twice_or_by_something_that_is_not_a_typeddict(plugin_kind: str) -> None:
    with pytest.raises(ValueError, match="event kind 'step' is already declared by convcheck.runtime.events.StepEvent"):
        register_event_schema("step", _LrFinderEvent)
    with pytest.raises(TypeError, match="must be a TypedDict"):
        register_event_schema(plugin_kind, dict)
    assert SCHEMAS["step"] is events.StepEvent
    assert plugin_kind not in SCHEMAS


# The examples whose runs write the most kinds between them: DDP over two processes with a DataLoader and a
# DistributedSampler (set_epoch), a DDP checkpoint saved and loaded, fp16 AMP with a GradScaler that overflows,
# and an lr scheduler. CC002's second run writes the same kinds again: left out, except for the last example,
# where CC002 stays selected so that its seeding recorder writes seed events too.
_EXAMPLES = ["cc005_lr_not_scaled", "cc001_ddp_checkpoint", "cc007_fp16_overflow", "cc011_scheduler_before_optimizer"]


@pytest.mark.slow
def test_every_line_of_the_examples_real_traces_fits_its_schema(tmp_path: Path) -> None:
    seen: set[str] = set()
    problems = []
    for name in _EXAMPLES:
        script = EXAMPLES / f"{name}.py"
        args, _ = parse_expectations(script)
        traces = tmp_path / name
        ignore = [] if name == _EXAMPLES[-1] else ["--ignore", "CC002"]
        result = convcheck("run", "--format", "json", "--fail-on", "never", *ignore, "--trace-dir", traces,
                           *args, script, cwd=script.parent)
        assert result.code == 0, result.stderr + result.stdout
        files = sorted(traces.rglob("trace-*.jsonl"))
        assert len(files) >= (2 if "--nproc-per-node" in args else 1), name
        for path in files:
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                event = json.loads(line)
                seen.add(event["ev"])
                problem = validate_event(event)
                if problem is not None:
                    problems.append(f"{path.relative_to(tmp_path)}:{number}: {problem}")
    assert problems == []
    assert sorted(seen - set(SCHEMAS)) == []
    assert {"process", "step", "backward", "zero_grad", "model", "optimizer", "loader", "loader_epoch", "sampler",
            "sampler_iter", "set_epoch", "dist_init", "ddp_init", "save", "load", "load_state_dict", "autocast",
            "scaler", "nonfinite", "sched_step", "seed", "histograms", "final", "stop", "end", "recorders", "ddp_sync",
            "amp_device"} <= seen


def test_numpy_and_torch_integers_are_written_as_integers_and_fit_the_schema(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    import torch

    from convcheck.runtime.trace import TraceWriter

    writer = TraceWriter(str(tmp_path))
    writer.emit({"ev": "sampler", "id": 0, "cls": "DistributedSampler", "shuffle": True, "num_replicas": np.int64(2),
                 "rank": torch.tensor(1), "seed": np.int32(7), "drop_last": False, "loc": None})
    writer.emit({"ev": "stop", "reason": "budget", "steps": 3, "x": np.float32(0.5), "t": torch.tensor([1, 2])})
    writer.close()

    trace = read_trace_dir(tmp_path)
    assert trace.damaged == []
    sampler, stop = trace.processes[0].events
    assert [(sampler[k], type(sampler[k])) for k in ("num_replicas", "rank", "seed")] == [(2, int), (1, int), (7, int)]
    assert (stop["x"], stop["t"]) == (0.5, "tensor([1, 2])")


def test_declaring_kinds_costs_no_pydantic_import() -> None:
    # Recorders run in the user's training processes: the schemas must not pull the validator in there.
    code = ("import sys, convcheck.runtime.events as e; e.register_event_schema('x', e.StopEvent); "
            "print('pydantic' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (out.returncode, out.stdout, out.stderr) == (0, "False\n", "")


def test_a_plugin_schema_pydantic_cannot_use_leaves_its_events_unvalidated() -> None:
    import typing

    class Unusable(typing.TypedDict):  # typing's TypedDict: pydantic refuses it before Python 3.12
        ev: str
        n: int

    register_event_schema("ex_unusable", Unusable)
    try:
        assert validate_event({"ev": "ex_unusable", "n": "not a number"}) is None
    finally:
        SCHEMAS.pop("ex_unusable", None)
