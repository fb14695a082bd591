"""Stable identities for findings: survive edits elsewhere in the file (baselines, SARIF)."""

from __future__ import annotations

import hashlib
import os
import re
from functools import lru_cache
from pathlib import Path

from convcheck.findings import Finding

_NUMBERS = re.compile(r"\d+(\.\d+)?(e[-+]?\d+)?")


def repo_root(start: Path) -> Path:
    """The enclosing git repository's root, else the current folder."""
    folder = (start if start.is_dir() else start.parent).resolve()
    for candidate in [folder, *folder.parents]:
        if (candidate / ".git").exists():
            return candidate
    return Path.cwd().resolve()


def relative_path(path: str, root: Path) -> str:
    """``path`` relative to ``root`` with forward slashes, when it lies inside it."""
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(root).as_posix()
    except ValueError:
        return Path(os.path.abspath(path)).as_posix()


@lru_cache(maxsize=64)
def _lines(path: str) -> tuple[str, ...]:
    try:
        return tuple(Path(path).read_text(encoding="utf-8", errors="replace").splitlines())
    except OSError:
        return ()


def source_line(path: str, line: int | None) -> str:
    """The stripped text of a source line, or '' when unknown."""
    lines = _lines(path)
    if line is None or not 1 <= line <= len(lines):
        return ""
    return lines[line - 1].strip()


def fingerprint(finding: Finding, root: Path) -> str:
    """Code, file and the text of the reported line (not its number), hashed.

    Numbers in the message (losses, timings) vary between runs, so the message counts
    only through its words.
    """
    parts = [finding.code]
    if finding.location is not None:
        parts.append(relative_path(finding.location.path, root))
        parts.append(source_line(finding.location.path, finding.location.line))
    else:
        parts.append(_NUMBERS.sub("#", finding.message))
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]
