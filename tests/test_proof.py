"""The text report's proof line: one sentence from each finding's evidence, from checks run on recorded traces."""

from __future__ import annotations

from test_cc004 import rank_events
from test_cc004 import runtime as cc004
from test_cc005 import runtime as cc005
from test_cc005 import trace as cc005_trace
from test_cc009 import runtime as cc009
from test_cc009 import trace as cc009_trace
from test_cc012 import runtime as cc012
from test_cc012 import trace as cc012_trace

from convcheck.findings import Finding, Severity
from convcheck.report.proof import proof
from convcheck.runtime.trace import RunTrace, load_events


def test_repeated_epochs() -> None:
    [finding] = cc004(RunTrace(processes=[load_events(rank_events(0, [(0, "aa"), (0, "aa"), (0, "aa")]))]))
    assert proof(finding) == "Same sample order in epochs 1–3 on rank 0 (the sampler's epoch stayed 0)."


def test_lr_by_world_size() -> None:
    [finding] = cc005(cc005_trace(2, 0.05, 0.05))
    assert proof(finding) == "The same lr 0.05 with 1 process and with 2 processes while the global batch went from 16 to 32."


def test_modules_in_eval_mode() -> None:
    [finding] = cc009(cc009_trace(0))
    assert proof(finding) == "2 modules in eval mode during 6 of 6 training steps: `1`, `3`."


def test_flat_loss() -> None:
    found = cc012(cc012_trace([0.7] * 12))
    assert [proof(f) for f in found if f.code == "CC012"] == ["The same loss 0.7 in all 12 backward passes."]


def test_unknown_evidence_falls_back_to_the_headline_in_words() -> None:
    finding = Finding(code="CC999", name="x", severity=Severity.INFO, message="m",
                      evidence={"rank": 0, "bad_batches": [3, 4, 5, 6, 7, 8]}, headline="bad_batches")
    assert proof(finding) == "Bad batches: 3, 4, 5, 6, 7 …"
    assert proof(finding.model_copy(update={"evidence": {}})) == ""
