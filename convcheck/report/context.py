"""What formats beyond the report itself need: the repository root, the fail level, the rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from convcheck.findings import Finding, Severity

#: Where each check's documentation is published; ``{code}`` is the check's code in lower case.
DOCS_URL = "https://github.com/convcheck/convcheck/blob/main/docs/rules.md#{code}"


@dataclass
class RenderContext:
    """Settings shared by every output format."""

    root: Path = field(default_factory=Path.cwd)
    fail_on: str = "error"
    checks: list = field(default_factory=list)

    def fails(self, finding: Finding) -> bool:
        """Whether this finding makes the run fail at the configured level."""
        return self.fail_on != "never" and finding.severity.rank >= Severity(self.fail_on).rank
