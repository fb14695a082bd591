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
                location=Location(path="train.py", line=31),
                evidence={"rank": 0, "sampler_built_at": "train.py:12", "epochs_observed": 3,
                          "sampler_epoch_each_time": [0, 0, 0], "index_digests": ["aa", "aa", "aa"]},
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
        "  proof     Same sample order in epochs 1–3 on rank 0 (the sampler's epoch stayed 0).\n"
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


def test_header_counts_the_steps_a_gradscaler_skipped() -> None:
    report = _report()
    from convcheck.report.text import render as render_text

    report.run.processes = [ProcessSummary(pid=11, steps=18, skipped_steps=12, backwards=30)]
    assert render_text(report, width=140).splitlines()[0] == (
        "convcheck train.py · 1 process · 30 steps (12 skipped by the GradScaler) · stopped at the step budget · 3.2 s"
    )


def test_tensorboard_folder_and_command_are_printed() -> None:
    report = _report()
    report.run.tensorboard_dir = "runs/train-20261123-101525"
    text = render(report, "text")
    assert (
        "TensorBoard event files: runs/train-20261123-101525\n"
        "  view them with: tensorboard --logdir runs\n"
    ) in text


def test_piped_text_has_no_trailing_spaces_and_follows_columns(monkeypatch, capsys) -> None:  # noqa: ANN001
    from convcheck.report.text import print_report

    report = _report()
    report.findings[0] = report.findings[0].model_copy(update={"message": "word " * 40})
    monkeypatch.setenv("COLUMNS", "60")
    print_report(report)
    narrow = capsys.readouterr().out
    lines = narrow.splitlines()
    assert lines and all(line == line.rstrip() for line in lines)
    assert max(len(line) for line in lines) <= 60
    assert max(len(line) for line in lines) > 50
    monkeypatch.delenv("COLUMNS")
    print_report(report)
    wide = capsys.readouterr().out.splitlines()
    assert all(line == line.rstrip() for line in wide)
    assert 100 < max(len(line) for line in wide) <= 120
