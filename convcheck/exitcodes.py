"""The exit codes of every convcheck command, in one place."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What a convcheck process tells its caller through its exit status."""

    #: The run completed and nothing was found at or above ``--fail-on``.
    OK = 0
    #: The run completed and found something at or above ``--fail-on``
    #: (for ``fix-state-dict``: verification or strict load failed).
    FINDINGS = 1
    #: convcheck could not run the script: bad arguments, a missing or
    #: unparsable script, or a script that crashed before its first training
    #: step (for ``fix-state-dict``: an unreadable or unwritable checkpoint).
    CANNOT_RUN = 2
    #: The script crashed, or a worker process died, after training started.
    #: The report holds everything gathered until then.
    CRASHED = 3
    #: The run was stopped at ``--timeout``: the script hung or was too slow.
    #: The report holds everything gathered until then, and where it hung.
    TIMEOUT = 4
    #: The script ran to its end without a single ``optimizer.step()``.
    NO_TRAINING_STEP = 5
    #: convcheck itself failed; the message says where. Please report it.
    INTERNAL_ERROR = 6
    #: Interrupted with Ctrl-C; every process the run started was stopped.
    INTERRUPTED = 130


def describe_exit_codes() -> str:
    """One line per exit code, for ``--help`` and the README."""
    lines = []
    for code in ExitCode:
        doc = _DOCS[code]
        lines.append(f"{int(code)}  {doc}")
    return "\n".join(lines)


_DOCS = {
    ExitCode.OK: "no finding at or above --fail-on",
    ExitCode.FINDINGS: "findings at or above --fail-on",
    ExitCode.CANNOT_RUN: "could not run the script (bad input, crash before the first step)",
    ExitCode.CRASHED: "the script or a worker crashed after training started (partial report)",
    ExitCode.TIMEOUT: "stopped at --timeout (partial report, with where it hung)",
    ExitCode.NO_TRAINING_STEP: "the script ended without any optimizer.step()",
    ExitCode.INTERNAL_ERROR: "convcheck itself failed",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C); all processes stopped",
}
