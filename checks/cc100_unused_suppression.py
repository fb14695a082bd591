"""CC100 unused-suppression: a ``# convcheck: ignore[...]`` that suppresses nothing."""

from __future__ import annotations

from convcheck.findings import Severity
from convcheck.registry import Check


class UnusedSuppression(Check):
    """## What it does
    Reports a `# convcheck: ignore[...]` or `# convcheck: ignore-file[...]` comment
    that suppressed no finding in this run.

    ## Why is this bad?
    A stale suppression hides the next real finding of that check on that line, long
    after the reason for it is gone.

    ## Example
    ```python
    sampler.set_epoch(epoch)
    loader = DataLoader(data, sampler=sampler)  # convcheck: ignore[CC004]
    ```

    ## Use instead
    ```python
    loader = DataLoader(data, sampler=sampler)
    ```

    ## Fix
    Remove the comment, or the codes in it that no longer fire. The suppression pass
    itself produces this finding (after every other check ran), so it can be ignored
    like any other check: `--ignore CC100`.

    ## Known limits
    It knows only the findings of this run: a suppression for a finding that shows only with other options
    (`--select`, `--nproc-per-node`, a longer run) is reported as unused.
    """

    code = "CC100"
    name = "unused-suppression"
    severity = Severity.INFO
    summary = "A suppression comment that suppressed no finding."

    @classmethod
    def evidence_kinds(cls) -> list[str]:
        """Read from the source's comments, after every other check ran."""
        return ["static"]
