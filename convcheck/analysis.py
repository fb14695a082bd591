"""Every selected check reads the static context and the run's traces; out come findings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from convcheck.findings import Finding

if TYPE_CHECKING:
    from convcheck.registry import Check
    from convcheck.runtime.trace import RunTrace
    from convcheck.static.context import StaticContext


def run_checks(
    checks: list[Check], ctx: StaticContext, trace: RunTrace | None, runtime: bool = True
) -> tuple[list[Finding], list[str]]:
    """Findings from every check, most severe first, and the checks that failed with why."""
    findings: list[Finding] = []
    errors: list[str] = []
    for check in checks:
        try:
            check.runtime_follows = runtime and trace is not None
            findings.extend(check.check_static(ctx))
            if runtime and trace is not None:
                findings.extend(check.check_runtime(trace, ctx))
        except Exception as exc:  # one broken check must not hide the others' findings
            errors.append(f"check {check.code} failed: {type(exc).__name__}: {exc}")
    return sort_findings(_dedupe(findings)), errors


def _dedupe(findings: list[Finding]) -> list[Finding]:
    seen = set()
    unique = []
    for finding in findings:
        key = (finding.code, finding.message, str(finding.location))
        if key not in seen:
            seen.add(key)
            unique.append(finding)
    return unique


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Most severe first, then by code and location."""
    return sorted(
        findings,
        key=lambda f: (-f.severity.rank, f.code, f.location.path if f.location else "",
                       (f.location.line or 0) if f.location else 0),
    )
