"""Correct code runs under convcheck exactly as under python: no patch or hook may raise into it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cc_testing import SCRIPTS, convcheck, read_traces
from convcheck.runtime.patches import Patches
from convcheck.runtime.typeslots import is_sequence


class _Owner:
    @staticmethod
    def add(a: int, b: int) -> int:
        if isinstance(a, int) and a < 0:
            raise ValueError("the original's own error")
        return a + b


@pytest.fixture
def owner() -> type[_Owner]:
    saved = _Owner.add
    yield _Owner
    _Owner.add = saved


def test_a_wrapper_failing_before_the_original_falls_back_to_it_and_says_so(owner: type[_Owner]) -> None:
    errors: list[str] = []
    patches = Patches(on_error=lambda where, exc: errors.append(f"{where}: {exc}"))

    def make(original):
        def add(a, b):
            raise KeyError("bookkeeping")

        return add

    patches.wrap(owner, "add", make)
    assert owner.add(2, 3) == 5
    assert owner.add(4, 3) == 7
    assert errors == ["_Owner.add: 'bookkeeping'"]  # once per patch
    patches.undo_all()
    assert owner.add.__name__ == "add" and not hasattr(owner.add, "__wrapped__")


def test_a_wrapper_failing_after_the_original_returns_the_originals_result_once(owner: type[_Owner]) -> None:
    calls: list[int] = []
    errors: list[str] = []
    patches = Patches(on_error=lambda where, exc: errors.append(where))

    def make(original):
        def add(a, b):
            calls.append(a)
            original(a, b)
            raise AttributeError("no per-optimizer state")

        return add

    patches.wrap(owner, "add", make)
    assert owner.add(1, 1) == 2
    assert calls == [1]  # the original ran once: no second call on the fallback path
    assert errors == ["_Owner.add"]


def test_the_originals_own_error_and_deliberate_errors_reach_the_caller(owner: type[_Owner]) -> None:
    errors: list[str] = []
    patches = Patches(on_error=lambda where, exc: errors.append(where))

    def make(original):
        def add(a, b):
            if b == 99:
                raise StopIteration
            return original(a, b)

        return add

    patches.wrap(owner, "add", make, deliberate=(StopIteration,))
    with pytest.raises(ValueError, match="the original's own error"):
        owner.add(-1, 0)
    with pytest.raises(StopIteration):
        owner.add(1, 99)
    assert errors == []


def test_calls_a_cheap_test_rejects_skip_the_wrapper_and_a_failing_test_is_reported(owner: type[_Owner]) -> None:
    seen: list[int] = []
    errors: list[str] = []
    patches = Patches(on_error=lambda where, exc: errors.append(where))

    def make(original):
        def add(a, b):
            seen.append(b)
            return original(a, b)

        return add

    def wanted(a, b):
        if b == 13:
            raise TypeError("the test itself failed")
        return b > 10

    patches.wrap(owner, "add", make, when=wanted)
    assert [owner.add(1, 2), owner.add(1, 20), owner.add(1, 13)] == [3, 21, 14]
    assert seen == [20]
    assert errors == ["_Owner.add"]


def test_undo_deletes_what_the_owner_only_inherited() -> None:
    class Base:
        def name(self) -> str:
            return "base"

    class Child(Base):
        pass

    patches = Patches()
    patches.wrap(Child, "name", lambda original: lambda self: "patched")
    assert Child().name() == "patched"
    patches.undo_all()
    assert "name" not in vars(Child)
    Base.name = lambda self: "changed later"
    assert Child().name() == "changed later"


def test_a_patched_tensor_getitem_leaves_tensors_no_sequences() -> None:
    """A Python ``__getitem__`` fills the sequence slot torch.Tensor lacks: ``torch.tensor([t])`` of a 0-d
    ``t`` would call ``len(t)`` and fail. The slot is emptied again on install and on undo."""
    zero_d = torch.tensor([1.5, 2.5])[1]
    seen: list[object] = []
    patches = Patches()

    def make(original):
        def __getitem__(source, index):
            seen.append(index)
            return original(source, index)

        return __getitem__

    patches.wrap(torch.Tensor, "__getitem__", make)
    try:
        assert torch.arange(5)[torch.tensor([1, 3])].tolist() == [1, 3]
        assert len(seen) == 1
        assert not is_sequence(zero_d)
        assert torch.tensor([zero_d, zero_d]).tolist() == [2.5, 2.5]
    finally:
        patches.undo_all()
    assert not is_sequence(zero_d)
    assert torch.tensor([zero_d]).tolist() == [2.5]


def test_a_global_hook_that_fails_is_silent_but_stop_signals_pass() -> None:
    errors: list[str] = []
    patches = Patches(on_error=lambda where, exc: errors.append(where))

    class Stop(BaseException):
        pass

    def failing(*args):
        raise TypeError("bookkeeping")

    def stopping(*args):
        raise Stop()

    assert patches.hook("pre", failing)(1, 2) is None
    assert errors == ["pre"]
    with pytest.raises(Stop):
        patches.hook("post", stopping)(1, 2)


def test_wrappers_step_aside_while_torch_compile_traces(owner: type[_Owner]) -> None:
    seen: list[int] = []
    patches = Patches()

    def make(original):
        def add(a, b):
            seen.append(b)
            return original(a, b)

        return add

    patches.wrap(owner, "add", make)
    try:
        compiled = torch.compile(lambda t: owner.add(t, 2), backend="eager", fullgraph=True)
        assert compiled(torch.ones(2)).tolist() == [3.0, 3.0]
        assert seen == []
        owner.add(1, 5)
        assert seen == [5]
    finally:
        patches.undo_all()


def test_eager_hooks_leave_dynamo_unimported_until_the_script_imports_it() -> None:
    # Importing dynamo costs about a second per process: the probe must not be the one to pay it.
    code = """
import sys
import torch
from convcheck.runtime.patches import Patches

seen = []
hook = Patches().hook("test", lambda x: seen.append(x), eager_under_compile=True)
hook(1)
assert "torch._dynamo" not in sys.modules, "the probe imported dynamo"
compiled = torch.compile(lambda t: (hook(2), t + 1)[1], backend="eager")
assert compiled(torch.ones(2)).tolist() == [2.0, 2.0]
assert compiled(torch.ones(2)).tolist() == [2.0, 2.0]
print("SEEN", seen)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    # Once the script compiled, the hook ran eagerly on every call, outside the traced graph.
    assert "SEEN [1, 2, 2]" in out.stdout


def _plain_result(script: Path) -> str:
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True, timeout=300)
    return next(line for line in out.stdout.splitlines() if line.startswith("RESULT"))


def _run_result(trace_dir: Path) -> str:
    stdout = (trace_dir / "stdout-0.txt").read_text()
    return next(line for line in stdout.splitlines() if line.startswith("RESULT"))


def _probe_errors(trace_dir: Path) -> list[dict]:
    return [e for events in read_traces(trace_dir) for e in events if e["ev"] == "probe_error"]


def test_unusual_but_legal_uses_of_every_patched_api_run_as_under_python(tmp_path: Path) -> None:
    """Disabled and idle scalers, scaled loss lists, closures (SGD, LBFGS), a late-filled param group,
    custom samplers without set_epoch, loaders without len, batch_size=None, ReduceLROnPlateau, ..."""
    script = SCRIPTS / "legal_configs.py"
    traces = tmp_path / "traces"
    result = convcheck("run", "--steps", "200", "--format", "json", "--trace-dir", traces, script)
    assert result.code == 0, result.stdout + result.stderr
    assert result.report["run"]["status"] == "completed"
    assert result.report["findings"] == []
    assert _probe_errors(traces) == []
    assert _run_result(traces) == _plain_result(script)
    # The disabled scaler was seen as the pass-through it is; no CUDA mapping is claimed for it.
    events = [e for t in read_traces(traces) for e in t]
    assert [e["call"] for e in events if e["ev"] == "scaler_passthrough"] == ["scale"]
    assert not any(e["ev"] == "scaler" and e.get("opt") is None and e["call"] == "step" for e in events)


def test_torch_compile_modules_functions_and_whole_steps_run_and_count(tmp_path: Path) -> None:
    script = SCRIPTS / "compiled_steps.py"
    traces = tmp_path / "traces"
    result = convcheck("run", "--steps", "100", "--format", "json", "--trace-dir", traces, script)
    assert result.code == 0, result.stdout + result.stderr
    assert result.report["findings"] == []
    assert _probe_errors(traces) == []
    assert _run_result(traces) == _plain_result(script)
    (main,) = [t for t in read_traces(traces) if any(e["ev"] == "step" for e in t)]
    # Steps inside the compiled training step count too: 4 loops of 5.
    assert max(e["n"] for e in main if e["ev"] == "step") == 20
    assert len([e for e in main if e["ev"] == "backward"]) == 20
    # The budget stops a run inside a compiled training step.
    stopped = convcheck("run", "--steps", "12", "--format", "json", script)
    assert stopped.code == 0, stopped.stdout + stopped.stderr
    assert stopped.report["run"]["status"] == "stopped-at-budget"
    assert {p["steps"] for p in stopped.report["run"]["processes"] if p["steps"]} == {12}


def test_a_recording_failure_is_reported_and_training_goes_on(tmp_path: Path) -> None:
    script = SCRIPTS / "probe_cannot_record.py"
    traces = tmp_path / "traces"
    result = convcheck("run", "--format", "json", "--trace-dir", traces, script)
    assert result.code == 0, result.stdout + result.stderr
    assert result.report["run"]["status"] == "completed"
    assert result.report["run"]["probe_errors"] == ["forward_pre_hook"]
    assert _run_result(traces) == _plain_result(script)
    text = convcheck("run", script)
    assert "convcheck could not record at forward_pre_hook" in " ".join(text.stdout.split())


def test_every_callback_waiting_for_one_module_runs_once_it_is_imported(tmp_path: Path, monkeypatch) -> None:
    from convcheck.runtime.importhook import after_import

    (tmp_path / "awaited_module.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "awaited_module", raising=False)
    seen: list[str] = []

    def first(module) -> None:
        seen.append(f"first {module.VALUE}")

    after_import("awaited_module", first)
    after_import("awaited_module", lambda module: seen.append(f"second {module.VALUE}"))
    after_import("awaited_module", first)  # already waiting: not called twice
    import awaited_module  # noqa: F401

    assert seen == ["first 1", "second 1"]
    after_import("awaited_module", lambda module: seen.append("late"))  # imported: called at once
    assert seen[-1] == "late"
    monkeypatch.delitem(sys.modules, "awaited_module")
