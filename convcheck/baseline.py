"""Baselines: adopt the gate on a legacy script and fail only on findings that are new."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from pydantic import BaseModel, ValidationError

from convcheck.findings import Finding
from convcheck.fingerprints import fingerprint, relative_path


class BaselineError(ValueError):
    """The baseline file is missing or malformed."""


class BaselineEntry(BaseModel):
    fingerprint: str
    code: str
    path: str | None = None
    message: str


class Baseline(BaseModel):
    version: int = 1
    findings: list[BaselineEntry]


def write_baseline(findings: list[Finding], path: Path, root: Path) -> None:
    """Record the current findings (atomically: a crash never leaves half a file)."""
    entries = [
        BaselineEntry(
            fingerprint=fingerprint(f, root), code=f.code, message=f.message,
            path=relative_path(f.location.path, root) if f.location else None,
        )
        for f in findings
    ]
    text = Baseline(findings=entries).model_dump_json(indent=2) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_baseline(path: Path) -> Baseline:
    """Read and validate a baseline file, or raise BaselineError saying why it cannot be used."""
    if path.exists() and not path.is_file():
        raise BaselineError(f"--baseline {path}: not a regular file. Give a baseline written by --write-baseline.")
    try:
        return Baseline.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError as exc:
        raise BaselineError(f"--baseline {path}: no such file. Create it with --write-baseline.") from exc
    except UnicodeDecodeError as exc:
        raise BaselineError(f"--baseline {path}: not a convcheck baseline (not UTF-8 text: {exc.reason}).") from exc
    except (OSError, json.JSONDecodeError, ValidationError) as exc:
        raise BaselineError(f"--baseline {path}: not a convcheck baseline ({type(exc).__name__}).") from exc


def filter_baseline(findings: list[Finding], path: Path, root: Path) -> tuple[list[Finding], int]:
    """The findings not in the baseline, and how many were."""
    baseline = read_baseline(path)
    known = {e.fingerprint for e in baseline.findings}
    fresh = [f for f in findings if fingerprint(f, root) not in known]
    return fresh, len(findings) - len(fresh)
