"""JUnit XML: one test case per check, failed when it reported at or above the fail level."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from convcheck.findings import Report
from convcheck.paths import display_loc
from convcheck.report.context import RenderContext


def render(report: Report, ctx: RenderContext) -> str:
    """The report as a JUnit XML document."""
    suite = ET.Element("testsuite", name="convcheck", tests=str(len(ctx.checks)))
    failures = 0
    for check in ctx.checks:
        case = ET.SubElement(suite, "testcase", classname=f"convcheck.{report.script}", name=f"{check.code} {check.name}")
        failing = [f for f in report.findings if f.code == check.code and ctx.fails(f)]
        if failing:
            failures += 1
            lines = [f"{f.severity.value} {display_loc(f.location) if f.location else report.script}: {f.message} "
                     f"Fix: {f.fix}" for f in failing]
            failure = ET.SubElement(case, "failure", message=failing[0].message, type=failing[0].severity.value)
            failure.text = "\n".join(lines)
    if report.run.status in ("crashed", "timeout", "interrupted", "no-training-step"):
        case = ET.SubElement(suite, "testcase", classname=f"convcheck.{report.script}", name="run")
        error = ET.SubElement(case, "error", message=report.run.status, type=report.run.status)
        error.text = report.run.error or report.run.status
        suite.set("tests", str(len(ctx.checks) + 1))
        suite.set("errors", "1")
    else:
        suite.set("errors", "0")
    suite.set("failures", str(failures))
    ET.indent(suite)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"
