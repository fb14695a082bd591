"""CC007 fp16-overflow: scaler timelines and overflow events from recorded traces, source snippets, AMP scripts."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest
from cc_testing import SCRIPTS, convcheck

from convcheck.checks.cc007_fp16_overflow import Fp16Overflow, static_misuse
from convcheck.runtime.trace import RunTrace, load_events
from convcheck.static.context import StaticContext

AUTOCAST = {"ev": "autocast", "device": "cpu", "dtype": "torch.float16", "enabled": True, "loc": ["t.py", 10]}


def _ctx(source: str = "") -> StaticContext:
    source = textwrap.dedent(source)
    return StaticContext(path=Path("t.py"), source=source, tree=ast.parse(source))


def _loop(iterations: int, *, clip: str | None = None, step: str = "scaler", update: bool = True,
          skipped=(), scaler: bool = True, dtype: str = "torch.float16") -> RunTrace:
    """A recorded AMP loop: clip is None, 'before' or 'after' unscale_; step is 'scaler' or 'optimizer'."""
    events: list[dict] = [{"ev": "process", "pid": 1, "role": "entry"}]
    scale, n = 65536.0, 0
    for i in range(iterations):
        events.append({**AUTOCAST, "dtype": dtype})
        if scaler:
            events.append({"ev": "scaler", "call": "scale", "scale": scale, "loc": ["t.py", 12]})
        events.append({"ev": "backward", "n": i + 1, "step": n, "loss": 1.0, "loc": ["t.py", 12]})
        if clip == "before":
            events.append({"ev": "clip", "kind": "norm", "max_norm": 1.0, "total_norm": 3e4, "loc": ["t.py", 13]})
        if scaler and (clip == "after" or step == "scaler"):
            events.append({"ev": "scaler", "call": "unscale_", "scale": scale, "opt": 0, "loc": ["t.py", 14]})
        if clip == "after":
            events.append({"ev": "clip", "kind": "norm", "max_norm": 1.0, "total_norm": 0.5, "loc": ["t.py", 15]})
        skip = i in skipped
        if not skip or step == "optimizer":
            n += 1
            events.append({"ev": "step", "opt": 0, "n": n, "backwards": 1, "grad": [0], "lrs": [0.1],
                           "loc": ["t.py", 16]})
        if scaler and step == "scaler":
            events.append({"ev": "scaler", "call": "step", "scale": scale, "opt": 0, "skipped": skip,
                           "loc": ["t.py", 16]})
        if scaler and update:
            scale = scale / 2 if skip else scale
            events.append({"ev": "scaler", "call": "update", "scale": scale, "loc": ["t.py", 17]})
    return RunTrace(processes=[load_events(events)])


def _found(trace: RunTrace) -> list[tuple[str, int | None]]:
    return [(f.severity.value, f.location.line if f.location else None)
            for f in Fp16Overflow().check_runtime(trace, _ctx())]


@pytest.mark.parametrize(
    ("trace", "expected"),
    [
        (_loop(6), []),
        (_loop(6, clip="after"), []),
        (_loop(6, skipped=(0, 1)), []),  # skipped steps that recover
        (_loop(6, dtype="torch.bfloat16", scaler=False), []),
        (_loop(6, clip="before"), [("error", 13)]),
        (_loop(6, step="optimizer"), [("error", 16)]),
        (_loop(6, update=False), [("error", 16)]),
        (_loop(6, scaler=False), [("warning", 10)]),
        (_loop(8, skipped=(1, 2, 3, 4, 5, 6, 7)), [("error", 16)]),
        (_loop(4, skipped=(0, 1, 2, 3)), []),  # a fresh scaler calibrating in a short run
    ],
    ids=["correct", "unscale-clip", "recovers", "bf16", "clip-first", "optimizer-step", "no-update", "no-scaler",
         "collapse", "calibrating"],
)
def test_runtime_verdicts(trace: RunTrace, expected: list) -> None:
    assert _found(trace) == expected


def test_overflow_confirmed_in_fp32_blames_the_module() -> None:
    trace = _loop(4, skipped=(0,))
    trace.processes[0].events.insert(2, {
        "ev": "nonfinite", "module": "encoder.0", "cls": "Linear", "step": 0, "dtype": "torch.float16",
        "fp16_autocast": True, "input_range": [-3.0, 9e4], "input_finite": True, "loc": ["t.py", 11],
        "fp32_finite": True, "fp32_max_abs": 1.2e5,
    })
    (finding,) = Fp16Overflow().check_runtime(trace, _ctx())
    assert finding.severity.value == "error" and finding.location.line == 11
    assert "`encoder.0` (Linear)" in finding.message and "bfloat16" in finding.message
    assert finding.evidence["bf16_fits"] and finding.evidence["skipped_steps"] == 1


def test_overflow_also_in_fp32_is_not_blamed_on_fp16() -> None:
    trace = _loop(4)
    trace.processes[0].events.insert(2, {
        "ev": "nonfinite", "module": "fc", "cls": "Linear", "step": 0, "fp16_autocast": True,
        "input_range": [0, 1], "input_finite": True, "loc": ["t.py", 11], "fp32_finite": False,
    })
    assert _found(trace) == []


STATIC = '''
import torch
from torch.cuda.amp import GradScaler, autocast

scaler = GradScaler()
for x, y in loader:
    with autocast():
        loss = model(x).sum()
    scaler.scale(loss).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # expect: clip-before-unscale
    scaler.step(opt)
    scaler.update()

def good_step(x):
    scaler.scale(model(x).sum()).backward()
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(opt)
    scaler.update()

def bad_step(x):
    scaler.scale(model(x).sum()).backward()
    opt.step()  # expect: optimizer-step
    scheduler.step()

other = torch.amp.GradScaler("cuda")
def no_update(x):
    other.scale(model(x).sum()).backward()
    other.step(opt)  # expect: no-update
'''


def test_static_expectations() -> None:
    ctx = _ctx(STATIC)
    got = [(s.line, s.kind) for s in static_misuse(ctx)]
    expected = [(n, line.rsplit("expect: ", 1)[1]) for n, line in enumerate(ctx.source.splitlines(), start=1)
                if "# expect:" in line]
    assert got == expected


def test_static_no_scaler() -> None:
    ctx = _ctx('import torch\nwith torch.autocast("cuda"):\n    y = m(x)\nwith torch.autocast("cpu"):\n    y = m(x)\n')
    assert [(s.line, s.kind) for s in static_misuse(ctx)] == [(2, "no-scaler")]
    bf16 = _ctx('import torch\nwith torch.autocast("cuda", dtype=torch.bfloat16):\n    y = m(x)\n')
    assert static_misuse(bf16) == []


@pytest.mark.parametrize(
    ("flags", "expected"),
    [([], []), (["--optimizer-step"], [("error", "optimizer-step")]), (["--no-scaler"], [("warning", "autocast")]),
     (["--bf16", "--no-scaler"], [])],
    ids=["correct", "optimizer-step", "no-scaler", "bf16"],
)
def test_amp_trainer_script(flags: list[str], expected: list) -> None:
    result = convcheck("run", "--format", "json", "--fail-on", "never", "--select", "CC007", "--steps", "3",
                       SCRIPTS / "cc007_amp_trainer.py", *flags)
    assert result.code == 0, result.stderr
    got = [(f["severity"], f["location"]["line"]) for f in result.findings("CC007")]
    lines = (SCRIPTS / "cc007_amp_trainer.py").read_text().splitlines()
    want = [(sev, next(n for n, text in enumerate(lines, 1) if text.endswith(f"# mark: {mark}")))
            for sev, mark in expected]
    assert got == want


def test_missing_update_that_stopped_the_script() -> None:
    trace = _loop(1, update=False)
    trace.processes[0].events.append({"ev": "crash", "step": 1,
                                      "error": "RuntimeError: step() has already been called since the last update()."})
    ctx = _ctx("import torch\nscaler = torch.amp.GradScaler('cpu')\nscaler.scale(loss).backward()\nscaler.step(opt)\n")
    check = Fp16Overflow()
    check.runtime_follows = True  # a run follows: static findings wait for it
    assert list(check.check_static(ctx)) == []
    (finding,) = check.check_runtime(trace, ctx)
    assert finding.severity.value == "error" and finding.source == "static+runtime" and finding.location.line == 4
    assert "stopped the script" in finding.message


def test_fp16_autocast_for_evaluation_only_needs_no_scaler() -> None:
    trace = _loop(3, scaler=False, dtype="torch.float32")
    events = trace.processes[0].events
    events.insert(len(events), {**AUTOCAST})  # an fp16 evaluation after the last backward
    assert _found(trace) == []


def test_fp32_recompute_leaves_the_module_and_the_rng_as_they_were(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from convcheck.runtime.probe import Probe

    probe = Probe(str(tmp_path), None, 10, None)
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.5))
    x = torch.randn(16, 4) * 1e5
    with torch.autocast("cpu", dtype=torch.float16):
        out = module(x)
    stats = module[1].running_mean.clone(), module[1].num_batches_tracked.clone()
    rng = torch.random.get_rng_state()
    with torch.autocast("cpu", dtype=torch.float16):
        result = probe._recompute_fp32(torch, module[0], (x,), out)
        assert torch.is_autocast_enabled("cpu")  # restored
    assert result["fp32_finite"] and result["fp32_max_abs"] > 65504
    assert torch.allclose(stats[0], module[1].running_mean, equal_nan=True)
    assert torch.equal(stats[1], module[1].num_batches_tracked)
    assert torch.equal(rng, torch.random.get_rng_state())
    bn = probe._recompute_fp32(torch, module, (x,), out)
    assert torch.equal(stats[1], module[1].num_batches_tracked) and "fp32_finite" in bn


def test_a_model_trained_in_float16_itself_whose_loss_turns_nan() -> None:
    def run(*flags: str) -> list[dict]:
        result = convcheck("run", "--format", "json", "--fail-on", "never", SCRIPTS / "nonfinite_runs.py", *flags)
        assert result.code == 0, result.stdout + result.stderr
        return result.findings()

    [finding] = run("--half")
    assert (finding["code"], finding["severity"], finding["location"]["line"]) == ("CC007", "error", 14)
    assert finding["evidence"]["nonfinite_from_step"] == 2
    assert finding["evidence"]["eps"] == 1e-08
    assert "Adam's eps=1e-08 rounds to 0 in float16" in finding["message"]
    assert run() == []
