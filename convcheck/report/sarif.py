"""SARIF 2.1.0 for GitHub code scanning: rules from the registry, stable partial fingerprints."""

from __future__ import annotations

import json

from convcheck import __version__
from convcheck.findings import Report, Severity
from convcheck.fingerprints import fingerprint, relative_path
from convcheck.report.context import DOCS_URL, RenderContext

SCHEMA_URI = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
_LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}


def _rule(check: type) -> dict:
    doc = check.documentation()
    return {
        "id": check.code,
        "name": check.name,
        "shortDescription": {"text": check.summary},
        "fullDescription": {"text": doc},
        "help": {"text": doc, "markdown": doc},
        "helpUri": DOCS_URL.format(code=check.code.lower()),
        "defaultConfiguration": {"level": _LEVEL[check.severity]},
        "properties": {"tags": ["convergence", *check.evidence_kinds()]},
    }


def render(report: Report, ctx: RenderContext) -> str:
    """The report as a SARIF log with one run."""
    rules = [_rule(c) for c in ctx.checks]
    index = {r["id"]: i for i, r in enumerate(rules)}
    results = []
    for finding in report.findings:
        result: dict = {
            "ruleId": finding.code,
            "level": _LEVEL[finding.severity],
            "message": {"text": f"{finding.message} Fix: {finding.fix}" if finding.fix else finding.message},
            "partialFingerprints": {"convcheckFinding/v1": fingerprint(finding, ctx.root)},
            "properties": {"name": finding.name, "source": finding.source, "evidence": finding.evidence},
        }
        if finding.code in index:
            result["ruleIndex"] = index[finding.code]
        if finding.location is not None:
            region = {"startLine": finding.location.line} if finding.location.line else {}
            physical: dict = {
                "artifactLocation": {"uri": relative_path(finding.location.path, ctx.root), "uriBaseId": "SRCROOT"}
            }
            if region:
                physical["region"] = region
            result["locations"] = [{"physicalLocation": physical}]
        results.append(result)
    log = {
        "$schema": SCHEMA_URI,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "convcheck",
                        "version": __version__,
                        "informationUri": DOCS_URL.split("#")[0],
                        "rules": rules,
                    }
                },
                "originalUriBaseIds": {"SRCROOT": {"uri": ctx.root.as_uri() + "/"}},
                "invocations": [
                    {
                        "executionSuccessful": report.run.status in ("completed", "stopped-at-budget", "static-only"),
                        "properties": {"status": report.run.status},
                    }
                ],
                "results": results,
            }
        ],
    }
    return json.dumps(log, indent=2) + "\n"
