"""CC023 accumulation-syncs-every-micro-step: recorded DDP backward passes, and a DDP trainer that accumulates."""

from __future__ import annotations

import pytest
from cc_testing import SCRIPTS, convcheck, read_traces
from static_expect import context

from convcheck.checks.cc023_accumulation_syncs_every_micro_step import AccumulationSyncsEveryMicroStep
from convcheck.runtime.trace import RunTrace, load_events

MODEL = {"ev": "model", "cls": "DistributedDataParallel", "wrapper": True, "params": [
    {"id": 0, "name": "fc.weight", "shape": [256, 1024], "requires_grad": True, "dtype": "torch.float32"},
    {"id": 1, "name": "fc.bias", "shape": [256], "requires_grad": True, "dtype": "torch.float32"}]}


def rank(r: int, syncs: list[list[bool | None]], world_size: int = 2, static: bool = False) -> list[dict]:
    """A rank's trace: one optimizer step per entry of ``syncs``, one backward per flag (None: no DDP forward)."""
    events: list[dict] = [{"ev": "process", "rank": r, "world_size": world_size},
                          {"ev": "dist_init", "rank": r, "world_size": world_size, "backend": "gloo"}, MODEL]
    n = 0
    for step, flags in enumerate(syncs):
        for flag in flags:
            n += 1
            events.append({"ev": "backward", "n": n, "step": step, "loss": 1.0, "loc": ["train.py", 22]})
            if flag is not None:
                events.append({"ev": "ddp_sync", "n": n, "step": step, "synced": flag, "static_graph": static})
        events.append({"ev": "step", "opt": 0, "n": step + 1, "backwards": len(flags), "grad": [0, 1],
                       "loc": ["train.py", 24]})
    return events


def runtime(*ranks: list[dict]) -> list:
    trace = RunTrace(processes=[load_events(e, pid=i + 1) for i, e in enumerate(ranks)], world_size=len(ranks))
    return list(AccumulationSyncsEveryMicroStep().check_runtime(trace, context("x = 1\n")))


ALL_SYNCED = [[True] * 4] * 3


def test_accumulation_that_syncs_every_micro_batch_reports_the_wasted_all_reduces() -> None:
    [finding] = runtime(rank(0, ALL_SYNCED), rank(1, ALL_SYNCED))
    assert (finding.code, finding.severity.value, finding.location.line) == ("CC023", "info", 22)
    assert finding.message == (
        "Gradient accumulation under DDP (2 ranks) all-reduced the gradients at every micro-batch: 4 backward "
        "passes per optimizer step, none inside `no_sync()`, so 3 of the 4 all-reduces of each step are wasted "
        "(3 of 3 steps observed). Each all-reduce moves 1 MB of gradients per rank.")
    assert finding.evidence["wasted_allreduces_per_step"] == 3
    assert finding.evidence["gradient_bytes"] == (256 * 1024 + 256) * 4
    assert "with model.no_sync():" in finding.fix


def test_no_sync_on_too_few_micro_batches_counts_the_extra_all_reduces() -> None:
    syncs = [[False, True, True, True]] * 2
    [finding] = runtime(rank(0, syncs), rank(1, syncs))
    assert "at 3 of the 4 backward passes of each optimizer step where only the last needs to, so 2 all-reduces " \
           "per step are wasted" in finding.message


def test_static_graph_still_reports_and_says_so() -> None:
    [finding] = runtime(rank(0, ALL_SYNCED, static=True), rank(1, ALL_SYNCED, static=True))
    assert finding.message.endswith("static_graph=True does not skip them.")
    assert finding.evidence["static_graph"] is True


@pytest.mark.parametrize("syncs", [
    pytest.param([[True]] * 4, id="one backward per step"),
    pytest.param([[False, False, False, True]] * 3, id="no_sync on all but the last"),
    pytest.param([[None, None, None, None]] * 3, id="no DDP forward (FSDP or a bypassed wrapper)"),
    pytest.param([[True, None, True]] * 3, id="a backward whose forward was not DDP's"),
])
def test_quiet(syncs: list[list[bool | None]]) -> None:
    assert runtime(rank(0, syncs), rank(1, syncs)) == []


def test_a_single_process_is_quiet() -> None:
    assert runtime(rank(0, ALL_SYNCED, world_size=1)) == []


def _run(*flags: str, trace_dir=None) -> list[dict]:
    extra = ["--trace-dir", trace_dir] if trace_dir is not None else []
    result = convcheck("run", "--format", "json", "--fail-on", "never", "--nproc-per-node", "2", "--steps", "4",
                       "--select", "CC023", *extra, SCRIPTS / "cc023_token_budget.py", *flags, cwd=SCRIPTS)
    assert result.code == 0, result.stdout + result.stderr
    return result.findings("CC023")


@pytest.mark.slow
def test_a_while_loop_trainer_with_static_graph_wastes_two_all_reduces_per_step(tmp_path) -> None:
    [finding] = _run("--static-graph", trace_dir=tmp_path)
    assert (finding["severity"], finding["location"]["line"]) == ("info", 33)
    assert finding["evidence"]["backwards_per_step"] == 3
    assert finding["evidence"]["wasted_allreduces_per_step"] == 2
    assert finding["evidence"]["static_graph"] is True
    # Only the recorder this check needs was installed.
    installed = [e["names"] for trace in read_traces(tmp_path) for e in trace if e["ev"] == "recorders"]
    assert installed and all(names == ["ddp_sync"] for names in installed)


@pytest.mark.slow
def test_no_sync_around_the_forward_alone_is_quiet() -> None:
    assert _run("--no-sync") == []
