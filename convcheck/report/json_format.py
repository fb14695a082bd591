"""The versioned JSON report (its schema is ``Report.model_json_schema()``)."""

from __future__ import annotations

from convcheck.findings import Report


def render(report: Report) -> str:
    """The report as indented JSON with a trailing newline."""
    return report.model_dump_json(indent=2) + "\n"
