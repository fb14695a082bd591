"""``-m package.module`` targets run as ``python -m`` runs them: relative imports, ``__main__``, cwd first."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cc_testing import convcheck

_COMMON = '''\
import torch


def batches():
    torch.manual_seed(0)
    x, y = torch.randn(64, 6), torch.randint(0, 2, (64,))
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
'''
_TRAIN = '''\
import os
import sys

import torch

from .common import batches

assert __name__ == "__main__" and __package__ == "mypkg", (__name__, __package__)
assert sys.path[0] == os.getcwd(), sys.path[0]
assert sys.argv[1:] == ["--lr", "0.1"], sys.argv
model = torch.nn.Linear(6, 2)
opt = torch.optim.SGD(model.parameters(), lr=float(sys.argv[2]))
for epoch in range(3):
    for x, y in batches():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()  # no zero_grad: CC008
        opt.step()
'''


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A working folder holding a package whose training module imports a sibling relatively."""
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "common.py").write_text(_COMMON)
    (package / "train.py").write_text(_TRAIN)
    (package / "__main__.py").write_text(_TRAIN)
    return tmp_path


def _cc008_location(report: dict) -> dict:
    (finding,) = [f for f in report["findings"] if f["code"] == "CC008"]
    return finding["location"]


@pytest.mark.parametrize(("module", "file"), [("mypkg.train", "train.py"), ("mypkg", "__main__.py")])
def test_run_dash_m_runs_the_module_like_python_dash_m(project: Path, module: str, file: str) -> None:
    result = convcheck("run", "--steps", "3", "--format", "json", "--fail-on", "never",
                       "-m", module, "--lr", "0.1", cwd=project)
    assert result.code == 0, result.stdout + result.stderr
    run = result.report["run"]
    assert run["error"] is None and run["processes"][0]["steps"] == 3
    assert run["script_argv"] == ["--lr", "0.1"]
    assert result.report["script"] == str(project / "mypkg" / file)
    assert _cc008_location(result.report) == {"path": str(project / "mypkg" / file), "line": 16}


def test_worker_mode_takes_dash_m(project: Path) -> None:
    report_file = project / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "convcheck.worker", "--steps", "3", "--format", "json", "--fail-on", "never",
         "--output", str(report_file), "-m", "mypkg.train", "--lr", "0.1"],
        cwd=project, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(report_file.read_text())
    assert report["run"]["processes"][0]["steps"] == 3
    assert _cc008_location(report) == {"path": str(project / "mypkg" / "train.py"), "line": 16}


def test_unknown_module_is_bad_input(project: Path) -> None:
    result = convcheck("run", "-m", "mypkg.nothing", cwd=project)
    assert result.code == 2
    assert result.stderr.startswith("convcheck: -m mypkg.nothing: no module named 'mypkg.nothing' in the working")
    result = convcheck("run", "-m", "mypkg.__init__x", cwd=project)
    assert result.code == 2
    assert "Traceback" not in result.stderr
