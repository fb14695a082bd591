"""Recorders are installed for the selected checks only, a check judges only evidence that was
recorded, and an installed third-party package adds a check together with its own recorder."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from cc_testing import EXAMPLES, convcheck, read_traces

# Whole runs of convcheck, several per test: `python -m pytest -m slow`, which CI runs too.
pytestmark = pytest.mark.slow

PLUGIN = Path(__file__).resolve().parent / "plugin"

SCRIPT = """
import torch
# The script itself sees whether convcheck patched its seeding function.
print("manual_seed patched:", "convcheck" in torch.manual_seed.__code__.co_filename)
torch.manual_seed(0)
model = torch.nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
sched = torch.optim.lr_scheduler.StepLR(opt, 5)
for step in range(100):
    loss = model(torch.randn(8, 4)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
"""


def _installed(trace_dir: Path) -> dict:
    events = [e for trace in read_traces(trace_dir) for e in trace if e["ev"] == "recorders"]
    assert len(events) == 1, events
    return events[0]


def test_a_single_check_installs_only_the_recorders_it_needs(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)

    result = convcheck("run", "--select", "CC004", "--steps", "3", "--trace-dir", tmp_path / "t", "--show-output",
                       script, cwd=tmp_path)

    assert result.code == 0, result.stderr
    assert _installed(tmp_path / "t") == {"ev": "recorders", "names": [], "patched": []}
    assert "manual_seed patched: False" in result.stdout


def test_every_check_installs_every_recorder(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)

    result = convcheck("run", "--steps", "3", "--ignore", "CC002", "--trace-dir", tmp_path / "t", "--show-output",
                       script, cwd=tmp_path)

    assert result.code == 0, result.stderr
    installed = _installed(tmp_path / "t")
    assert installed["names"] == ["amp_device", "attention_masks", "checkpointing", "datasets", "ddp_sync", "gradflow",
                                  "graph", "inputs", "labels", "modes", "provenance", "schedulers",
                                  "warnings"]  # no CC002: no seeding
    assert installed["patched"] == ["LRScheduler.step", "Module.train", "warnings.showwarning", "Tensor.__getitem__",
                                    "_BaseDataLoaderIter.__next__", "DataLoader.__init__",
                                    "torch.utils.checkpoint.checkpoint",
                                    "torch.utils.checkpoint.checkpoint_sequential", "Tensor.masked_fill",
                                    "Tensor.masked_fill_", "torch.nn.functional.scaled_dot_product_attention"]
    assert "manual_seed patched: False" in result.stdout


def test_a_check_with_only_its_own_recorder_still_finds_its_bug(tmp_path: Path) -> None:
    result = convcheck("run", "--select", "CC002", "--format", "json", "--trace-dir", tmp_path / "t",
                       EXAMPLES / "cc002_seed_after_model.py", cwd=tmp_path)

    assert result.code == 1, result.stderr
    assert [f["code"] for f in result.findings()] == ["CC002"]
    assert _installed(tmp_path / "t")["names"] == ["seeding"]
    seeds = [e for trace in read_traces(tmp_path / "t") for e in trace if e["ev"] == "seed"]
    assert [(s["rng"], s["value"], s["loc"][1], s["drawn_before"]) for s in seeds] == [("torch", 0, 10, True)]


def test_a_trace_without_a_checks_evidence_is_not_read_as_a_bug(tmp_path: Path) -> None:
    # Recorded for CC004 only: no seed was recorded, which must not read as "never seeded".
    recorded = convcheck("run", "--select", "CC004", "--trace-dir", tmp_path / "t",
                         EXAMPLES / "cc002_seed_after_model_fixed.py", cwd=tmp_path)
    assert recorded.code == 0, recorded.stderr

    result = convcheck("report", "--trace-dir", tmp_path / "t" / "trace", "--select", "CC002", "--format", "json",
                       cwd=tmp_path)

    assert result.code == 0, result.stderr
    assert result.findings() == []
    assert ("check CC002 judged the source only: the trace was recorded without the seeding recorder(s) it needs"
            in result.report["run"]["error"])


PLUGIN_BUG = """
import torch
import torch.nn.functional as F
torch.manual_seed(0)
model = torch.nn.Linear(4, 3)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(100):
    x, labels = torch.randn(8, 4), torch.randint(0, 3, (8,))
    pad = torch.zeros(8, dtype=torch.bool)
    labels[~pad] = -100  # meant: labels[pad] = -100
    loss = F.cross_entropy(model(x), labels)
    opt.zero_grad()
    loss.backward()
    opt.step()
"""


def _with_plugin() -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(PLUGIN), os.environ.get("PYTHONPATH")]))}


def test_an_installed_plugin_adds_a_check_with_its_own_recorder(tmp_path: Path) -> None:
    bug, fixed = tmp_path / "bug.py", tmp_path / "fixed.py"
    bug.write_text(textwrap.dedent(PLUGIN_BUG))
    fixed.write_text(textwrap.dedent(PLUGIN_BUG).replace("labels[~pad] = -100  # meant:", "labels[pad] = -100  #"))

    found = convcheck("run", "--select", "EX001", "--format", "json", "--trace-dir", tmp_path / "t", bug,
                      cwd=tmp_path, env=_with_plugin())
    quiet = convcheck("run", "--select", "EX001", "--format", "json", fixed, cwd=tmp_path, env=_with_plugin())

    assert found.code == 1, found.stderr
    [finding] = found.findings("EX001")
    assert finding["message"] == ("All 8 targets of the cross-entropy at step 0 equal ignore_index: the loss is "
                                  "NaN and the batch teaches nothing.")
    assert finding["location"]["line"] == 11
    assert _installed(tmp_path / "t") == {"ev": "recorders", "names": ["cross-entropy-targets"],
                                          "patched": ["torch.nn.functional.cross_entropy"]}
    assert quiet.code == 0, quiet.stderr
    assert quiet.findings() == []


def test_a_check_whose_recorder_is_missing_is_refused(tmp_path: Path) -> None:
    # The check is installed, its recorder is not: a plain message, exit 2, nothing run.
    site = tmp_path / "site"
    site.mkdir()
    dist = site / "partial-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: partial\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[convcheck.checks]\nall-targets-ignored = convcheck_ignored_targets:AllTargetsIgnored\n")
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(tmp_path / "code")])}
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "convcheck_ignored_targets").symlink_to(PLUGIN / "convcheck_ignored_targets")

    result = convcheck("run", "--select", "EX001", script, cwd=tmp_path, env=env)

    assert result.code == 2
    assert result.stderr.startswith("convcheck: EX001 (all-targets-ignored) needs the recorder(s) "
                                    "cross-entropy-targets, which no installed package provides")
