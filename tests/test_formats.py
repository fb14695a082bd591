"""SARIF, JUnit and GitHub outputs: exact text, and SARIF valid against the 2.1.0 schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from convcheck.findings import Finding, Location, ProcessSummary, Report, RunSummary, Severity
from convcheck.fingerprints import fingerprint
from convcheck.registry import Check
from convcheck.report import render
from convcheck.report.context import RenderContext

SCHEMA = Path(__file__).parent / "data" / "sarif-schema-2.1.0.json"


class FakeSampler(Check):
    """## What it does
    Finds samplers.
    """

    code = "CC004"
    name = "sampler-epoch-not-set"
    severity = Severity.ERROR
    summary = "A DistributedSampler never gets set_epoch."

    def check_static(self, ctx):  # noqa: ANN001, ANN201
        return ()


class FakeLr(Check):
    """## What it does
    Finds learning rates.
    """

    code = "CC005"
    name = "lr-not-scaled"
    severity = Severity.WARNING
    summary = "lr does not follow the global batch."


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / ".git").mkdir()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text("a = 1\nsampler = make()\nlr = 0.1\n")
    return tmp_path


def _report(repo: Path) -> Report:
    script = str(repo / "src" / "train.py")
    return Report(
        script=script,
        findings=[
            Finding(
                code="CC004", name="sampler-epoch-not-set", severity=Severity.ERROR,
                message="Same order in epochs 1 and 2, 50%: repeat", location=Location(path=script, line=2),
                evidence={"epochs": [0, 0]}, fix="Call sampler.set_epoch(epoch).", source="static+runtime",
            ),
            Finding(
                code="CC005", name="lr-not-scaled", severity=Severity.WARNING, message="lr 0.1, line\nbreak",
                location=Location(path=script, line=3), fix="Use lr 0.2.",
            ),
        ],
        run=RunSummary(status="stopped-at-budget", processes=[ProcessSummary(pid=1, steps=3)]),
    )


def _ctx(repo: Path, fail_on: str = "error") -> RenderContext:
    return RenderContext(root=repo, fail_on=fail_on, checks=[FakeSampler, FakeLr])


def test_sarif_is_valid_and_complete(repo: Path) -> None:
    report = _report(repo)
    log = json.loads(render(report, "sarif", _ctx(repo)))
    jsonschema.validate(log, json.loads(SCHEMA.read_text()))
    run = log["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == ["CC004", "CC005"]
    assert rules[0]["fullDescription"]["text"] == "## What it does\nFinds samplers."
    assert rules[0]["helpUri"].endswith("#cc004")
    assert rules[1]["defaultConfiguration"] == {"level": "warning"}
    first, second = run["results"]
    assert first["level"] == "error" and second["level"] == "warning"
    assert first["ruleIndex"] == 0
    assert first["locations"][0]["physicalLocation"] == {
        "artifactLocation": {"uri": "src/train.py", "uriBaseId": "SRCROOT"}, "region": {"startLine": 2}
    }
    assert first["message"]["text"] == "Same order in epochs 1 and 2, 50%: repeat Fix: Call sampler.set_epoch(epoch)."
    assert first["partialFingerprints"]["convcheckFinding/v1"] == fingerprint(report.findings[0], repo)


def test_fingerprint_survives_line_moves_and_numbers(repo: Path) -> None:
    finding = _report(repo).findings[0]
    before = fingerprint(finding, repo)
    script = repo / "src" / "train.py"
    script.write_text("# a new comment\n\na = 1\nsampler = make()\nlr = 0.1\n")
    from convcheck.fingerprints import _lines

    _lines.cache_clear()
    moved = finding.model_copy(update={"location": Location(path=str(script), line=4), "message": "Same 7"})
    assert fingerprint(moved, repo) == before
    other_line = finding.model_copy(update={"location": Location(path=str(script), line=5)})
    assert fingerprint(other_line, repo) != before


def test_junit_exact(repo: Path) -> None:
    report = _report(repo)
    script = report.script
    assert render(report, "junit", _ctx(repo)) == (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<testsuite name="convcheck" tests="2" errors="0" failures="1">\n'
        f'  <testcase classname="convcheck.{script}" name="CC004 sampler-epoch-not-set">\n'
        f'    <failure message="Same order in epochs 1 and 2, 50%: repeat" type="error">error {script}:2: '
        "Same order in epochs 1 and 2, 50%: repeat Fix: Call sampler.set_epoch(epoch).</failure>\n"
        "  </testcase>\n"
        f'  <testcase classname="convcheck.{script}" name="CC005 lr-not-scaled" />\n'
        "</testsuite>\n"
    )
    assert 'failures="2"' in render(report, "junit", _ctx(repo, fail_on="warning"))


def test_junit_reports_a_crashed_run_as_an_error(repo: Path) -> None:
    report = _report(repo).model_copy(update={"findings": [], "run": RunSummary(status="crashed", error="boom")})
    xml = render(report, "junit", _ctx(repo))
    assert 'tests="3" errors="1" failures="0"' in xml
    assert '<error message="crashed" type="crashed">boom</error>' in xml


def test_github_annotations_exact(repo: Path) -> None:
    assert render(_report(repo), "github", _ctx(repo)) == (
        "::error file=src/train.py,line=2,title=CC004 sampler-epoch-not-set::"
        "Same order in epochs 1 and 2, 50%25: repeat Fix: Call sampler.set_epoch(epoch).\n"
        "::warning file=src/train.py,line=3,title=CC005 lr-not-scaled::lr 0.1, line%0Abreak Fix: Use lr 0.2.\n"
    )
