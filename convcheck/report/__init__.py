"""Report formats: each a module with one ``render`` function behind this small interface."""

from __future__ import annotations

from convcheck.findings import Report
from convcheck.report.context import RenderContext


def render(report: Report, fmt: str, ctx: RenderContext | None = None) -> str:
    """The report in the given format."""
    ctx = ctx or RenderContext()
    if fmt == "json":
        from convcheck.report.json_format import render as render_json

        return render_json(report)
    if fmt == "sarif":
        from convcheck.report.sarif import render as render_sarif

        return render_sarif(report, ctx)
    if fmt == "junit":
        from convcheck.report.junit import render as render_junit

        return render_junit(report, ctx)
    if fmt == "github":
        from convcheck.report.github import render as render_github

        return render_github(report, ctx)
    from convcheck.report.text import render as render_text

    return render_text(report)
