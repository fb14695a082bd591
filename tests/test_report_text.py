"""The text and JSON reports render exactly what a user reads."""

from __future__ import annotations

import json

from cc_testing import convcheck

from convcheck.findings import Finding, Location, ProcessSummary, Report, RunSummary, Severity
from convcheck.report import render


def _report() -> Report:
    return Report(
        script="train.py",
        findings=[
            Finding(
                code="CC004", name="sampler-epoch-not-set", severity=Severity.ERROR,
                message="The DistributedSampler built at train.py:31 gave the same order in epochs 1, 2 and 3.",
                location=Location(path="train.py", line=31), evidence={"epochs": [0, 0, 0], "identical": True},
                fix="Call sampler.set_epoch(epoch) at the start of every epoch.", source="static+runtime",
            ),
            Finding(
                code="CC005", name="lr-not-scaled", severity=Severity.INFO, message="lr 0.001 at every world size.",
                location=Location(path="train.py", line=20), fix="Scale lr by sqrt(world_size).",
            ),
        ],
        run=RunSummary(
            status="stopped-at-budget", steps_budget=8, nproc_per_node=2, wall_seconds=3.21,
            processes=[ProcessSummary(pid=11, rank=0, steps=8, backwards=8), ProcessSummary(pid=12, rank=1, steps=8)],
            redirected_saves=[{"path": "ckpt.pt", "file": "train.py", "line": 40}],
        ),
    )


def test_text_report_exact() -> None:
    assert render(_report(), "text") == (
        "convcheck train.py · 2 processes · 8 steps each · stopped at the step budget · 3.2 s\n"
        "\n"
        " ERROR   CC004 sampler-epoch-not-set  train.py:31  [static+runtime]\n"
        "            The DistributedSampler built at train.py:31 gave the same order in epochs 1, 2 and 3.\n"
        "  evidence  epochs=[0, 0, 0]; identical=true\n"
        "  fix       Call sampler.set_epoch(epoch) at the start of every epoch.\n"
        "\n"
        " INFO    CC005 lr-not-scaled  train.py:20  [runtime]\n"
        "            lr 0.001 at every world size.\n"
        "  fix       Scale lr by sqrt(world_size).\n"
        "\n"
        "Files the script saved during the run went to a scratch folder (yours were not touched):\n"
        "  ckpt.pt  (train.py:40)\n"
        "\n"
        "1 error, 0 warnings, 1 info · run stopped at the step budget\n"
    )


def test_json_report_round_trips() -> None:
    report = _report()
    data = json.loads(render(report, "json"))
    assert data["version"] == 1
    assert data["findings"][0]["location"] == {"path": "train.py", "line": 31}
    assert Report.model_validate(data) == report


def test_schema_command_prints_the_report_schema() -> None:
    result = convcheck("schema")
    assert result.code == 0
    schema = json.loads(result.stdout)
    assert schema == Report.model_json_schema()
    assert set(schema["required"]) == {"script"}
