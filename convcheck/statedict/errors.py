"""The error a user sees when a checkpoint cannot be fixed, and the helpers that word its messages."""

from __future__ import annotations

import re

from convcheck.exitcodes import ExitCode


class CheckpointError(Exception):
    """Bad input: a message for the user (one paragraph) and an exit code."""

    def __init__(self, message: str, exit_code: ExitCode = ExitCode.CANNOT_RUN, kind: str = "bad-input"):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.kind = kind


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _printable(text: str, limit: int = 160) -> str:
    """``text`` on one line, without control or garbage characters, at most ``limit`` long."""
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _first_line(exc: BaseException) -> str:
    text = _ANSI.sub("", str(exc)).strip()
    return (text.splitlines()[0] if text else type(exc).__name__).strip()


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
