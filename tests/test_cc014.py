"""CC014 batchnorm-tiny-batch: recorded traces, and a DDP script with lazy layers and a batch size flag."""

from __future__ import annotations

from cc_testing import SCRIPTS, convcheck
from static_expect import context

from convcheck.checks.cc014_batchnorm_tiny_batch import BatchnormTinyBatch
from convcheck.runtime.trace import RunTrace, load_events

SOURCE = """
import torch.nn as nn
net = nn.Sequential(nn.Conv2d(3, 8, 3),
                    nn.BatchNorm2d(8))
"""


def rank(r: int, batch: int | None, cls: str = "BatchNorm2d", world: int = 2) -> list[dict]:
    events = [{"ev": "process", "rank": r, "world_size": world},
              {"ev": "dist_init", "rank": r, "world_size": world, "backend": "gloo"},
              {"ev": "model", "cls": "DistributedDataParallel", "wrapper": True, "params": [{"id": 0, "name": "0.w"}],
               "mode_modules": [{"name": "module.1", "cls": cls}]}]
    if batch is not None:
        events.append({"ev": "loader", "id": 0, "batch_size": batch, "dataset_len": 64, "loc": ["train.py", 9]})
    events += [{"ev": "backward", "n": 1, "step": 0, "loss": 1.0, "loc": ["train.py", 20],
                "graph": [{"name": "NllLossBackward0", "depth": 0, "parent": -1,
                           "attrs": {"reduction": 1, "self": {"shape": [3, 10]}}}]},
               {"ev": "step", "opt": 0, "n": 1, "grad": [0]}]
    return events


def runtime(*ranks: list[dict], source: str = SOURCE, options: dict | None = None) -> list:
    check = BatchnormTinyBatch()
    check.options = options or {}
    trace = RunTrace(processes=[load_events(e, pid=i + 1) for i, e in enumerate(ranks)], world_size=len(ranks))
    return list(check.check_runtime(trace, context(source)))


def test_tiny_batch_under_ddp_is_advice_at_the_batchnorm() -> None:
    [finding] = runtime(rank(0, 4), rank(1, 4))
    assert finding.severity.value == "info"
    assert finding.location.line == 4
    assert finding.evidence["per_process_batch"] == 4
    assert finding.evidence["global_batch"] == 8
    assert finding.evidence["batchnorm_layers"] == ["1"]


def test_batch_from_the_loss_when_there_is_no_loader() -> None:
    [finding] = runtime(rank(0, None), rank(1, None), source="x = 1\n")
    assert finding.evidence["per_process_batch"] == 3
    assert finding.location.line == 20


def test_large_batch_sync_batchnorm_or_single_process_are_quiet() -> None:
    assert runtime(rank(0, 32), rank(1, 32)) == []
    assert runtime(rank(0, 4, cls="SyncBatchNorm"), rank(1, 4, cls="SyncBatchNorm")) == []
    assert runtime(rank(0, 4, world=1)) == []


def test_threshold_is_configurable() -> None:
    assert runtime(rank(0, 4), rank(1, 4), options={"max-batch": 2}) == []
    assert len(runtime(rank(0, 16), rank(1, 16), options={"max-batch": 16})) == 1


def test_lazy_mlp_with_batch_size_flag() -> None:
    result = convcheck("run", "--format", "json", "--fail-on", "never", "--nproc-per-node", "2", "--steps", "2",
                       "--select", "CC014", SCRIPTS / "cc014_mlp_bn.py", "--batch-size", "2")
    assert result.code == 0, result.stderr
    [finding] = result.findings("CC014")
    assert (finding["severity"], finding["location"]["line"]) == ("info", 15)
    assert finding["evidence"]["batchnorm_layers"] == ["1", "4"]


def test_batchnorm_kept_in_eval_mode_is_quiet() -> None:
    ranks = [rank(0, 4), rank(1, 4)]
    for events in ranks:
        for event in events:
            if event["ev"] == "backward":
                event["eval_modules"], event["eval_roots"] = ["module.1"], [[0, 1]]
    assert runtime(*ranks) == []
