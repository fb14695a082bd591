"""The benchmark scripts run in quick mode and print their ratios (they assert no timings)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from cc_testing import REPO

# Long end-to-end runs (the benchmark scripts' quick runs): `python -m pytest -m slow`, which CI runs too.
pytestmark = pytest.mark.slow

_RATIO = re.compile(r"ratio\s+(\d+\.\d+)")


@pytest.mark.parametrize("name", ["overhead.py", "memory.py", "fix_state_dict.py", "trace_validation.py",
                                  "indexing.py", "realistic.py"])
def test_benchmark_prints_ratios(name: str) -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / name), "--quick"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    ratios = [float(r) for r in _RATIO.findall(out.stdout)]
    assert ratios, out.stdout
    assert all(r > 0 for r in ratios)
    print(out.stdout)


def test_time_to_verdict_quick() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "time_to_verdict.py"), "--quick"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "fixed start-up cost" in out.stdout
    print(out.stdout)


def test_overhead_compares_every_checks_recorders_with_a_single_checks() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "overhead.py"), "--quick", "--select"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    every = ("amp_device, attention_masks, checkpointing, datasets, ddp_sync, gradflow, graph, inputs, labels, modes, "
             "provenance, schedulers, seeding, warnings")
    assert f"recorders: every check: {every}; --select CC004: none" in out.stdout
    assert len(_RATIO.findall(out.stdout)) == 6  # three models, two selections each
    print(out.stdout)


def _verdict_exits(stdout: str) -> list[str]:
    """convcheck runs that did not exit 0. A plain torchrun run may: gloo's teardown now and then exits 1."""
    return re.findall(r"(?:convcheck|--ignore CC002|--start-method spawn) exit \d+", stdout)


def test_time_to_verdict_by_world_size_quick() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "time_to_verdict.py"), "--world", "--quick"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    rows = [line[:20].strip() for line in out.stdout.splitlines() if _RATIO.search(line)]
    assert rows == ["python (1 process)", "torchrun N=1", "torchrun N=2"], out.stdout
    # convcheck, --ignore CC002 and --start-method spawn against each plain run
    assert len(_RATIO.findall(out.stdout)) == 9
    assert not _verdict_exits(out.stdout), out.stdout  # every verdict ended cleanly
    print(out.stdout)


def test_time_to_verdict_of_the_realistic_model_quick() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "time_to_verdict.py"), "--world", "--model", "gpt", "--quick"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "(gpt)" in out.stdout and len(_RATIO.findall(out.stdout)) == 9, out.stdout
    assert not _verdict_exits(out.stdout), out.stdout
    print(out.stdout)


def test_gpu_check_rehearses_on_the_cpu() -> None:
    # The same runs a GPU machine makes, with the scripts' CUDA usage mapped onto the CPU.
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick", "--jobs", "2"],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "8 of 8 scripts as expected" in out.stdout
    assert {"amp_overflow.py", "amp_overflow_fixed.py", "nccl_sampler.py", "nccl_sampler_fixed.py"} <= set(
        re.findall(r"^ok\s+(\S+)", out.stdout, re.MULTILINE))
    assert len(_RATIO.findall(out.stdout)) == 6  # three models, wall and CPU time
    print(out.stdout)


def test_gpu_check_without_cuda_says_so() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py")], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 1 and "CUDA is not available here" in out.stderr
    assert "Traceback" not in out.stderr
