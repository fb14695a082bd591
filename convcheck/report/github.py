"""GitHub Actions workflow commands: one annotation per finding."""

from __future__ import annotations

from convcheck.findings import Report, Severity
from convcheck.fingerprints import relative_path
from convcheck.report.context import RenderContext

_COMMAND = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}


def _data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _prop(text: str) -> str:
    return _data(text).replace(":", "%3A").replace(",", "%2C")


def render(report: Report, ctx: RenderContext) -> str:
    """``::error file=…,line=…,title=…::message`` lines."""
    lines = []
    for f in report.findings:
        props = []
        if f.location is not None:
            props.append(f"file={_prop(relative_path(f.location.path, ctx.root))}")
            if f.location.line:
                props.append(f"line={f.location.line}")
        props.append(f"title={_prop(f'{f.code} {f.name}')}")
        message = f"{f.message} Fix: {f.fix}" if f.fix else f.message
        lines.append(f"::{_COMMAND[f.severity]} {','.join(props)}::{_data(message)}")
    if report.run.error:
        lines.append(f"::error title=convcheck run {report.run.status}::{_data(report.run.error)}")
    return "".join(line + "\n" for line in lines)
