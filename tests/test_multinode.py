"""Worker mode under torchrun: two launches on this machine play two nodes of one job."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cc_testing import SCRIPTS, convcheck
from convcheck.runtime.launcher import free_port

import pytest

# Long end-to-end runs (two-node torchrun jobs): `python -m pytest -m slow`, which CI runs too.
pytestmark = pytest.mark.slow


def _two_nodes(tmp_path: Path, worker_args: list[str], script: Path) -> list[subprocess.CompletedProcess]:
    port = free_port()
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "2",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "convcheck-test",
        "-m", "convcheck.worker", *worker_args, str(script),
    ]
    nodes = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = []
    for node in nodes:
        out, err = node.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(cmd, node.returncode, out, err))
    return results


def test_two_nodes_share_a_trace_folder_and_rank0_reports(tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    report_file = tmp_path / "report.json"
    nodes = _two_nodes(
        tmp_path,
        ["--trace-dir", str(traces), "--steps", "4", "--max-batches-per-epoch", "2", "--format", "json",
         "--output", str(report_file)],
        SCRIPTS / "ddp_torchrun.py",
    )
    assert [n.returncode for n in nodes] == [0, 0], nodes[0].stderr[-2000:] + nodes[1].stderr[-2000:]
    report = json.loads(report_file.read_text())
    assert report["run"]["status"] == "stopped-at-budget"
    assert sorted((p["rank"], p["steps"]) for p in report["run"]["processes"]) == [(0, 4), (1, 4), (2, 4), (3, 4)]
    assert len(list(traces.glob("trace-*.jsonl"))) == 4
    # The traces stay for later analysis: `convcheck report` reaches the same verdict.
    again = convcheck("report", "--trace-dir", traces, "--format", "json")
    assert again.code == 0, again.stderr
    assert again.report["findings"] == report["findings"]
    assert again.report["run"]["processes"] == report["run"]["processes"]


def test_two_nodes_gather_traces_over_the_jobs_process_group(tmp_path: Path) -> None:
    report_file = tmp_path / "report.json"
    nodes = _two_nodes(
        tmp_path, ["--steps", "3", "--format", "json", "--output", str(report_file)], SCRIPTS / "ddp_torchrun.py"
    )
    assert [n.returncode for n in nodes] == [0, 0], nodes[0].stderr[-2000:] + nodes[1].stderr[-2000:]
    report = json.loads(report_file.read_text())
    assert sorted(p["rank"] for p in report["run"]["processes"]) == [0, 1, 2, 3]
    # Rank 0 removed the gathered copies; nothing was left in the working folder.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_report_without_traces_is_bad_input(tmp_path: Path) -> None:
    result = convcheck("report", "--trace-dir", tmp_path)
    assert result.code == 2
    assert "holds no trace of a script run by convcheck's worker" in result.stderr


def test_rank0_prints_the_report_then_says_exit_1_is_the_gate(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(
        "import torch\n"
        "w = torch.zeros(3, requires_grad=True)\n"
        "opt = torch.optim.SGD([w], lr=0.1)\n"
        "for _ in range(10):\n"
        "    ((w - 1) ** 2).sum().backward()  # zero_grad() is never called\n"
        "    opt.step()\n"
    )
    proc = subprocess.run([sys.executable, "-m", "convcheck.worker", "--steps", "3", str(script)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 1, proc.stderr
    assert "ERROR   CC008 grads-not-zeroed" in proc.stdout
    assert proc.stdout.rstrip().endswith("1 error, 0 warnings, 0 info · run stopped at the step budget")
    assert proc.stderr.splitlines()[-1] == (
        "convcheck: rank 0 exits 1 because of findings at or above --fail-on error: this is the gate, not a crash "
        "(the launcher may report it as a failed child below). The report is above."
    )
