"""Running convcheck the way users do, for end-to-end tests."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "scripts"
EXAMPLES = REPO / "examples"


@dataclass
class Result:
    """A finished ``convcheck`` process."""

    code: int
    stdout: str
    stderr: str

    @property
    def report(self) -> dict:
        return json.loads(self.stdout)

    def findings(self, code: str | None = None) -> list[dict]:
        found = self.report["findings"]
        return [f for f in found if code is None or f["code"] == code]


def convcheck(
    *args: str | os.PathLike, cwd: Path | None = None, timeout: float = 600, env: dict[str, str] | None = None,
    cores: set[int] | None = None,
) -> Result:
    """Run ``python -m convcheck ARGS`` and capture its output (``env`` adds to the environment).

    The timeout only bounds a run that hangs: a busy machine may be many times slower than a quiet one.
    ``cores`` pins convcheck and everything it starts to those CPU cores.
    """
    proc = subprocess.run(
        [sys.executable, "-m", "convcheck", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, timeout=timeout, stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        preexec_fn=None if cores is None else lambda: os.sched_setaffinity(0, cores),
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def sigint_as_from_a_terminal() -> None:
    """``preexec_fn`` of a command a test interrupts: SIGINT handled by default, as under a terminal.

    A suite started as a background job of a shell inherits SIGINT ignored, and Python leaves an
    ignored SIGINT ignored: the test's Ctrl-C would then never arrive.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def read_traces(trace_dir: Path) -> list[list[dict]]:
    """Every process's events from a --trace-dir folder."""
    traces = []
    for path in sorted((trace_dir / "trace").glob("trace-*.jsonl")):
        traces.append([json.loads(line) for line in path.read_text().splitlines() if line.strip()])
    return traces


def processes_running(needle: str) -> list[str]:
    """Command lines of live processes that mention ``needle``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            status = (entry / "status").read_text()
        except OSError:
            continue
        if needle in cmdline and "State:\tZ" not in status:
            found.append(cmdline)
    return found


_ARGS = re.compile(r"#\s*convcheck-args:\s*(.+)$")
_EXPECT = re.compile(r"#\s*expect:\s*(CC\d{3})\s+(error|warning|info)\b")


def examples(fixed: bool) -> list[Path]:
    """The bundled examples: the fixed twins (``*_fixed.py``) or the buggy scripts."""
    return sorted(p for p in EXAMPLES.glob("*.py")
                  if not p.name.startswith("_") and p.stem.endswith("_fixed") == fixed)


def parse_expectations(path: Path) -> tuple[list[str], list[tuple[str, str, int]]]:
    """The run options and the (code, severity, line) findings an example declares."""
    args: list[str] = []
    expected = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if match := _ARGS.search(line):
            args = shlex.split(match.group(1))
        for match in _EXPECT.finditer(line):
            expected.append((match.group(1), match.group(2), number))
    return args, expected
