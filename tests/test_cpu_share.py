"""Processes that run side by side share the cores: no run's OpenMP threads fight another's."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cc_testing import SCRIPTS, convcheck


def _threads(*options: str, env: dict[str, str] | None = None) -> set[str]:
    result = convcheck("run", "--show-output", "--fail-on", "never", "--steps", "3", *options, SCRIPTS / "threads.py",
                       env=env)
    assert result.code == 0, result.stderr
    return {line for line in result.stdout.splitlines() if line.startswith("THREADS ")}


def _cores() -> int:
    return len(os.sched_getaffinity(0))


def test_a_single_process_run_beside_its_repeat_gets_its_share_of_the_cores() -> None:
    share = str(max(1, _cores() // 2))
    assert _threads() == {f"THREADS env={share} torch={share}"}


def test_a_single_process_run_alone_is_left_as_python_would_start_it() -> None:
    (line,) = _threads("--select", "CC004")
    assert line.startswith("THREADS env=- ")


def test_each_rank_gets_one_thread_as_under_torchrun() -> None:
    assert _threads("--nproc-per-node", "2") == {"THREADS env=1 torch=1"}
    assert _threads("--nproc-per-node", "2", "--start-method", "spawn") == {"THREADS env=1 torch=1"}


def _plain_threads(env: dict[str, str]) -> str:
    code = "import torch; print(torch.get_num_threads())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300,
                         env={**os.environ, **env})
    return out.stdout.strip()


@pytest.mark.slow
def test_a_thread_count_the_user_chose_is_kept() -> None:
    env = {"OMP_NUM_THREADS": "3"}
    plain = _plain_threads(env)  # torch keeps at most one thread per core
    assert _threads(env=env) == {f"THREADS env=3 torch={plain}"}
    assert _threads("--nproc-per-node", "2", env=env) == {f"THREADS env=3 torch={plain}"}
