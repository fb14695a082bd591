"""Suppressions: ``# convcheck: ignore[CC004]`` on a line or statement, ``ignore-file[...]`` per file,
per-file ignores from the configuration, and reports of suppressions that suppress nothing.
"""

from __future__ import annotations

import ast
import fnmatch
import io
import re
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

from convcheck.checks.cc100_unused_suppression import UnusedSuppression
from convcheck.findings import Finding, Location, Severity

# The check that documents the findings this pass makes about suppressions themselves.
UNUSED_CODE = UnusedSuppression.code
UNUSED_NAME = UnusedSuppression.name
_COMMENT = re.compile(r"#\s*convcheck:\s*(ignore-file|ignore)(?:\[([^\]]*)\])?", re.IGNORECASE)
ALL = "*"


@dataclass
class Suppression:
    """One suppression comment."""

    path: str
    line: int
    file_level: bool
    codes: set[str]
    used: set[str] = field(default_factory=set)


@dataclass
class FileSuppressions:
    """The suppression comments of one file and its statements' line spans."""

    path: str
    by_line: dict[int, Suppression] = field(default_factory=dict)
    file_level: list[Suppression] = field(default_factory=list)
    statement_start: dict[int, int] = field(default_factory=dict)


def _normalize(token: str) -> str:
    from convcheck.catalog import find_check

    token = token.strip()
    match = find_check(token)
    return match.code if match else token.upper()


def parse_file(path: str) -> FileSuppressions:
    """Read the suppression comments of a Python file (none when it cannot be read)."""
    result = FileSuppressions(path=path)
    try:
        source = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return result
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type != tokenize.COMMENT:
                continue
            match = _COMMENT.search(tok.string)
            if not match:
                continue
            kind, codes = match.group(1).lower(), match.group(2)
            code_set = {_normalize(c) for c in codes.split(",") if c.strip()} if codes else {ALL}
            sup = Suppression(path=path, line=tok.start[0], file_level=kind == "ignore-file", codes=code_set)
            if sup.file_level:
                result.file_level.append(sup)
            else:
                result.by_line[sup.line] = sup
    except (tokenize.TokenError, SyntaxError):
        return result
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return result
    for node in ast.walk(tree):
        if isinstance(node, ast.stmt) and not isinstance(
            node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.For, ast.While, ast.If, ast.With, ast.Try)
        ):
            for line in range(node.lineno, (node.end_lineno or node.lineno) + 1):
                result.statement_start.setdefault(line, node.lineno)
    return result


def _matches(sup: Suppression, code: str) -> bool:
    return ALL in sup.codes or code in sup.codes


def apply_suppressions(
    findings: list[Finding],
    per_file_ignores: dict[str, list[str]] | None = None,
    config_dir: Path | None = None,
    extra_files: list[str] | None = None,
) -> list[Finding]:
    """The findings no suppression covers, plus an info finding for each suppression that covered nothing."""
    cache: dict[str, FileSuppressions] = {}

    def suppressions(path: str) -> FileSuppressions:
        if path not in cache:
            cache[path] = parse_file(path)
        return cache[path]

    for path in extra_files or []:
        suppressions(path)
    kept = []
    for finding in findings:
        if finding.code == UNUSED_CODE:
            kept.append(finding)
            continue
        if finding.location is None:
            kept.append(finding)
            continue
        path = finding.location.path
        if _ignored_by_config(path, finding.code, per_file_ignores or {}, config_dir):
            continue
        file_sup = suppressions(path)
        hit = None
        for sup in file_sup.file_level:
            if _matches(sup, finding.code):
                hit = sup
        line = finding.location.line
        if hit is None and line is not None:
            for candidate in (line, file_sup.statement_start.get(line)):
                sup = file_sup.by_line.get(candidate) if candidate else None
                if sup is not None and _matches(sup, finding.code):
                    hit = sup
                    break
        if hit is None:
            kept.append(finding)
        else:
            hit.used.add(finding.code)
    for file_sup in cache.values():
        for sup in [*file_sup.file_level, *file_sup.by_line.values()]:
            unused = sorted(c for c in sup.codes if c != ALL and c not in sup.used)
            if ALL in sup.codes and not sup.used:
                unused = ["all checks"]
            if unused:
                kept.append(_unused_finding(sup, unused))
    return kept


def _ignored_by_config(path: str, code: str, per_file: dict[str, list[str]], config_dir: Path | None) -> bool:
    if not per_file:
        return False
    candidates = {Path(path).as_posix(), Path(path).name}
    if config_dir is not None:
        try:
            candidates.add(Path(path).resolve().relative_to(config_dir.resolve()).as_posix())
        except ValueError:
            pass
    for pattern, codes in per_file.items():
        if any(fnmatch.fnmatch(c, pattern) for c in candidates):
            if {_normalize(c) for c in codes} & {code, ALL}:
                return True
    return False


def _unused_finding(sup: Suppression, unused: list[str]) -> Finding:
    kind = "ignore-file" if sup.file_level else "ignore"
    return Finding(
        code=UNUSED_CODE, name=UNUSED_NAME, severity=Severity.INFO,
        message=f"This '# convcheck: {kind}' suppresses nothing: no finding of {', '.join(unused)} was reported here.",
        location=Location(path=sup.path, line=sup.line), evidence={"unused": unused},
        fix="Remove the suppression (or the codes it no longer needs).", source="static",
    )
