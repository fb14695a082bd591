"""``convcheck rules`` and ``convcheck explain``: the checks' own documentation, rendered."""

from __future__ import annotations

from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table

from convcheck.exitcodes import ExitCode


def print_rules(console: Console | None = None) -> None:
    """A table of every check."""
    from convcheck.catalog import all_checks

    table = Table(title="convcheck checks", show_lines=False)
    for column in ("code", "name", "severity", "evidence"):
        table.add_column(column, no_wrap=True)
    table.add_column("summary", overflow="fold")
    for check in all_checks():
        table.add_row(check.code, check.name, check.severity.value, "+".join(check.evidence_kinds()), check.summary)
    _console(console).print(table)


def _console(console: Console | None) -> Console:
    if console is not None:
        return console
    console = Console()
    # Piped (CI logs, files): wide enough that codes and names are never folded.
    return console if console.is_terminal else Console(width=120)


REQUIRED_SECTIONS = ("What it does", "Why is this bad?", "Example", "Use instead", "Fix", "Known limits")


def rules_markdown() -> str:
    """Every check's documentation as one markdown page (docs/rules.md is this, generated)."""
    from convcheck.catalog import all_checks

    lines = [
        "# convcheck rules",
        "",
        "Generated from each check's docstring by `convcheck rules --format markdown`; do not edit by hand.",
        "",
        "| code | name | default severity | evidence | summary |",
        "|---|---|---|---|---|",
    ]
    checks = all_checks()
    for check in checks:
        anchor = check.code.lower()
        lines.append(
            f"| [{check.code}](#{anchor}) | {check.name} | {check.severity.value} | "
            f"{'+'.join(check.evidence_kinds())} | {check.summary} |"
        )
    for check in checks:
        doc = check.documentation().replace("\n## ", "\n### ")
        if doc.startswith("## "):
            doc = "#" + doc
        lines += ["", f'<a id="{check.code.lower()}"></a>', f"## {check.code} {check.name}", "", doc]
    return "\n".join(lines) + "\n"


def print_explanation(code: str, console: Console | None = None) -> ExitCode:
    """The documentation of one check, or a clear error for an unknown code."""
    from convcheck.catalog import all_checks, find_check

    console = _console(console)
    check = find_check(code)
    if check is None:
        known = ", ".join(f"{c.code} ({c.name})" for c in all_checks())
        Console(stderr=True).print(f"convcheck: unknown check {code!r}. Known checks: {known}.", highlight=False)
        return ExitCode.CANNOT_RUN
    console.print(Markdown(f"# {check.code} {check.name} ({check.severity.value})\n\n{check.documentation()}"))
    return ExitCode.OK
