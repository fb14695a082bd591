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
    recorded = recorded_evidence(trace) if runtime and trace is not None else None
    for check in checks:
        try:
            missing = sorted(set(check.needs) - recorded) if recorded is not None else []
            if missing:
                # Judging from a trace without the check's evidence would read absence as a bug.
                errors.append(f"check {check.code} judged the source only: the trace was recorded without "
                              f"the {', '.join(missing)} recorder(s) it needs")
            check.runtime_follows = runtime and trace is not None and not missing
            findings.extend(check.check_static(ctx))
            if check.runtime_follows:
                findings.extend(check.check_runtime(trace, ctx))
        except Exception as exc:  # one broken check must not hide the others' findings
            errors.append(f"check {check.code} failed: {type(exc).__name__}: {exc}")
    return sort_findings(_dedupe(findings)), errors


def recorded_evidence(trace: RunTrace) -> set[str] | None:
    """The recorders every process of the trace installed (None: traces that do not say, so all)."""
    recorded: set[str] | None = None
    for proc in trace.processes:
        for event in proc.of("recorders"):
            names = {n for n in event.get("names", []) if isinstance(n, str)}
            recorded = names if recorded is None else recorded & names
    return recorded


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
