"""Report formats: each a module with one ``render(report) -> str`` function."""

from __future__ import annotations

from convcheck.findings import Report

FORMATS = ("text", "json")


def render(report: Report, fmt: str) -> str:
    """The report in the given format."""
    if fmt == "json":
        from convcheck.report.json_format import render as render_json

        return render_json(report)
    from convcheck.report.text import render as render_text

    return render_text(report)
