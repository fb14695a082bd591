"""CC025 fp16-where-bf16-fits: recorded AMP loops on a GPU and on the CPU, and a CUDA-written script run here."""

from __future__ import annotations

import pytest
from cc_testing import SCRIPTS, convcheck, read_traces
from static_expect import context

from convcheck.checks.cc025_fp16_where_bf16_fits import Fp16WhereBf16Fits
from convcheck.runtime.trace import RunTrace, load_events

A100 = {"ev": "amp_device", "step": 0, "cuda": True, "bf16_supported": True, "capability": [8, 0],
        "device_name": "NVIDIA A100-SXM4-40GB"}
V100 = {**A100, "bf16_supported": False, "capability": [7, 0], "device_name": "Tesla V100-SXM2-16GB"}
NO_GPU = {"ev": "amp_device", "step": 0, "cuda": False, "bf16_supported": None, "capability": None,
          "device_name": None}
AGNOSTIC = 'device = "cuda" if torch.cuda.is_available() else "cpu"\n'
CPU_ONLY = 'with torch.autocast("cpu", dtype=torch.float16):\n    pass\n'


def loop(device: str = "cuda", dtype: str = "torch.float16", scaler: bool = True, gpu: dict | None = A100,
         steps: int = 4, skipped: tuple = (), extra: tuple = (), param_dtype: str = "torch.float32") -> RunTrace:
    events: list[dict] = [{"ev": "process", "pid": 1, "role": "entry"}, *extra,
                          {"ev": "model", "cls": "Net", "wrapper": False, "params": [
                              {"id": 0, "name": "fc.weight", "shape": [2, 4], "requires_grad": True,
                               "dtype": param_dtype}]}]
    for i in range(steps):
        events.append({"ev": "autocast", "device": device, "dtype": dtype, "enabled": True, "loc": ["train.py", 20],
                       "step": i})
        if scaler:
            events.append({"ev": "scaler", "call": "scale", "scale": 65536.0, "step": i, "loc": ["train.py", 22]})
        events.append({"ev": "backward", "n": i + 1, "step": i, "loss": 1.0, "loc": ["train.py", 22]})
        if i == 0 and gpu is not None:
            events.append(gpu)
        events.append({"ev": "step", "opt": 0, "n": i + 1, "backwards": 1, "grad": [0], "loc": ["train.py", 23]})
        if scaler:
            events.append({"ev": "scaler", "call": "step", "scale": 65536.0, "opt": 0, "skipped": i in skipped,
                           "step": i + 1, "loc": ["train.py", 23]})
            events.append({"ev": "scaler", "call": "update", "scale": 65536.0, "step": i + 1})
    return RunTrace(processes=[load_events(events)])


def runtime(trace: RunTrace, source: str = "x = 1\n") -> list:
    return list(Fp16WhereBf16Fits().check_runtime(trace, context(source)))


def test_fp16_with_a_scaler_on_a_gpu_with_bf16() -> None:
    [finding] = runtime(loop(skipped=(0,)))
    assert (finding.code, finding.severity.value, finding.location.line) == ("CC025", "info", 20)
    assert finding.message == (
        "fp16 autocast with a GradScaler on NVIDIA A100-SXM4-40GB (compute capability 8.0), which supports bfloat16: "
        "bf16 has fp32's exponent range, so it needs no loss scaling, skips no steps and does not overflow above "
        "fp16's 65504 (the scaler skipped 1 of 4 steps here).")
    assert finding.evidence["capability"] == [8, 0]
    assert "dtype=torch.bfloat16" in finding.fix and "torch.cuda.is_bf16_supported()" in finding.fix


def test_the_training_region_is_located_not_an_evaluation_pass_before_it() -> None:
    trace = loop()
    evaluation = {"ev": "autocast", "device": "cuda", "dtype": "torch.float16", "enabled": True,
                  "loc": ["train.py", 9], "step": 0}
    trace.processes[0].events.insert(2, evaluation)
    [finding] = runtime(trace)
    assert finding.location.line == 20


def test_cuda_amp_mapped_to_the_cpu_says_what_holds_on_an_ampere_gpu() -> None:
    mapped = ({"ev": "device_map", "what": "autocast('cuda') -> CPU fp16", "loc": ["train.py", 20], "step": 0},)
    [finding] = runtime(loop(device="cpu", gpu=NO_GPU, extra=mapped))
    assert finding.message.startswith(
        "This machine has no GPU, so convcheck ran the script's CUDA fp16 autocast and GradScaler as CPU fp16 "
        "autocast. On an Ampere-or-later GPU (compute capability 8.0 or more: A100, H100, RTX 30xx/40xx) bf16 "
        "autocast would need no GradScaler: ")
    assert finding.evidence["cuda_mapped_to_cpu"] is True


def test_cpu_autocast_of_a_script_that_also_targets_cuda() -> None:
    [finding] = runtime(loop(device="cpu", gpu=NO_GPU), source=AGNOSTIC)
    assert finding.message.startswith("This run used CPU fp16 autocast with a GradScaler (no GPU here; the script "
                                      "also targets CUDA). On an Ampere-or-later GPU")
    assert finding.evidence["cuda_mapped_to_cpu"] is False


@pytest.mark.parametrize(("trace", "source"), [
    pytest.param(loop(dtype="torch.bfloat16"), "x = 1\n", id="bf16 autocast"),
    pytest.param(loop(scaler=False), "x = 1\n", id="fp16 without a scaler (CC007)"),
    pytest.param(loop(gpu=V100), "x = 1\n", id="a GPU without native bf16"),
    pytest.param(loop(gpu=None), "x = 1\n", id="device not recorded"),
    pytest.param(loop(param_dtype="torch.float16"), "x = 1\n", id="float16 weights"),
    pytest.param(loop(device="cpu", gpu=NO_GPU), CPU_ONLY, id="a CPU-only script that asks for fp16"),
    pytest.param(loop(steps=0), "x = 1\n", id="no training step"),
])
def test_quiet(trace: RunTrace, source: str) -> None:
    assert runtime(trace, source) == []


def test_quiet_where_cc007_already_advises_bf16() -> None:
    overflow = ({"ev": "nonfinite", "module": "fc", "cls": "Linear", "step": 0, "dtype": "torch.float16",
                 "fp16_autocast": True, "input_range": [-1e5, 1e5], "input_finite": True, "loc": ["train.py", 21],
                 "fp32_finite": True, "fp32_max_abs": 1.2e5},)
    assert runtime(loop(extra=overflow)) == []
    assert runtime(loop(steps=6, skipped=(0, 1, 2, 3, 4, 5))) == []  # the scale collapses: CC007's finding
    assert len(runtime(loop(steps=6, skipped=(0, 1)))) == 1  # a fresh scaler settling is no collapse


def _run(*flags: str, trace_dir=None) -> list[dict]:
    extra = ["--trace-dir", trace_dir] if trace_dir is not None else []
    result = convcheck("run", "--format", "json", "--fail-on", "never", "--steps", "5", "--select", "CC025", *extra,
                       SCRIPTS / "cc025_cuda_amp.py", *flags, cwd=SCRIPTS)
    assert result.code == 0, result.stdout + result.stderr
    return result.findings("CC025")


@pytest.mark.slow
def test_torch_cuda_amp_script_run_on_the_cpu(tmp_path) -> None:
    [finding] = _run(trace_dir=tmp_path)
    assert (finding["severity"], finding["location"]["line"]) == ("info", 22)
    assert finding["evidence"]["cuda_mapped_to_cpu"] is True
    assert finding["evidence"]["scaler_steps"] == 5
    [device] = [e for trace in read_traces(tmp_path) for e in trace if e["ev"] == "amp_device"]
    assert {k: device[k] for k in ("cuda", "bf16_supported")} == {"cuda": False, "bf16_supported": None}


@pytest.mark.slow
def test_the_same_script_in_bf16_is_quiet() -> None:
    assert _run("--bf16") == []
