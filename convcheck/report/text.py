"""The human report: findings grouped by severity, each with location, evidence and fix."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from convcheck.findings import Finding, Report, RunSummary, Severity
from convcheck.paths import display_loc, display_path, display_paths_in
from convcheck.report.proof import proof

_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "bold yellow", Severity.INFO: "bold cyan"}
_STATUS = {
    "completed": "the script ran to its end",
    "stopped-at-budget": "stopped at the step budget",
    "no-training-step": "no training step observed",
    "crashed": "the script crashed",
    "timeout": "stopped at the timeout",
    "interrupted": "interrupted",
    "not-run": "not run",
    "static-only": "static checks only (the script was not run)",
}


class FindingView:
    """One finding as the terminal shows it."""

    def __init__(self, finding: Finding) -> None:
        self.finding = finding

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        f = self.finding
        head = Text()
        head.append(f" {f.severity.value.upper():<7}", style=_STYLE[f.severity])
        head.append(f" {f.code} ", style="bold")
        head.append(f.name)
        if f.location is not None:
            head.append(f"  {display_loc(f.location)}", style="underline")
        head.append(f"  [{f.source}]", style="dim")
        yield head
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="dim", no_wrap=True, min_width=8)
        grid.add_column(overflow="fold")
        grid.add_row("", Text(display_paths_in(f.message)))
        shown = proof(f)
        if shown:
            grid.add_row("proof", Text(display_paths_in(shown)))
        if f.fix:
            grid.add_row("fix", Text(display_paths_in(f.fix), style="green"))
        yield Padding(grid, (0, 0, 1, 2))


class ReportView:
    """The whole report: header, findings by severity, run notes, summary line."""

    def __init__(self, report: Report) -> None:
        self.report = report

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        report, run = self.report, self.report.run
        # A step the GradScaler skipped (inf/NaN gradients) was still taken: count it, and say how many.
        busiest = max(run.processes, key=lambda p: p.steps + p.skipped_steps, default=None)
        steps = busiest.steps + busiest.skipped_steps if busiest else 0
        skipped = f" ({busiest.skipped_steps} skipped by the GradScaler)" if busiest and busiest.skipped_steps else ""
        trainers = [p for p in run.processes if p.steps or p.backwards or p.skipped_steps]
        header = Text()
        header.append("convcheck ", style="bold")
        header.append(display_paths_in(report.script), style="bold")
        count = len(trainers) or len(run.processes)
        if run.status == "static-only":
            header.append(f" · {_STATUS[run.status]}")
        else:
            header.append(
                f" · {count} process{'es' if count != 1 else ''} · {steps} step{'s' if steps != 1 else ''}"
                f"{' each' if count > 1 else ''}{skipped} · {_STATUS[run.status]} · {run.wall_seconds:.1f} s"
            )
        yield header
        note = epochs_note(run)
        if note:
            yield Text(note, style="dim")
        for row in run.extra_runs:
            if row.get("why"):
                yield Text(display_paths_in(row["why"]), style="dim")
        yield Text("")
        if run.error:
            style = "red" if run.status in ("crashed", "timeout") else "yellow"
            yield Padding(Text(display_paths_in(run.error), style=style), (0, 0, 1, 2))
        for where in run.hung_at:
            yield Padding(Text(f"hung at {display_paths_in(where)}", style="red"), (0, 0, 0, 2))
        if run.hung_at:
            yield Text("")
        for severity in Severity:
            group = [f for f in report.findings if f.severity == severity]
            if group:
                yield Group(*(FindingView(f) for f in group))
        glance = _glance(report)
        if glance is not None:
            yield glance
        if run.device_mapping:
            yield Text("The script's CUDA usage ran on the CPU (AMP as CPU fp16); mapped:")
            for item in run.device_mapping:
                yield Text(f"  {item['what']}{_where(item, '  ({})')}", style="dim")
            yield Text("")
        for item in run.unmappable:
            yield Text(f"{item['what']}{_where(item, ' at {}')} has no CPU equivalent: the run stopped there.",
                       style="red")
        if run.probe_errors:
            yield Text(f"convcheck could not record at {', '.join(run.probe_errors)}: the script's calls there ran "
                       "as without convcheck, and findings that depend on them may be missing.", style="yellow")
            yield Text("")
        if run.file_changes:
            from convcheck.runtime.fsguard import OP_WORDS

            yield Text("The script changed these paths during the run; the changes went to the run's scratch "
                       f"folder (deleted afterwards) and yours were not touched ({_protection_words(run)}):")
            for row in run.file_changes[:_MAX_FILE_ROWS]:
                native = "  (outside Python: caught by the kernel-level layer)" if row.get("level") == "kernel" else ""
                yield Text(f"  {OP_WORDS.get(row.get('op'), row.get('op'))}: {_path(row.get('path'))}"
                           f"{_where(row, '  ({})')}{native}", style="dim")
            if len(run.file_changes) > _MAX_FILE_ROWS:
                yield Text(f"  … and {len(run.file_changes) - _MAX_FILE_ROWS} more (all in --format json)",
                           style="dim")
            yield Text("")
        if run.unprotected_mounts:
            yield Text("Mounts inside the protected folders that the kernel-level layer passed through "
                       "(Python-level guard only): " + ", ".join(f"{m['path']} ({m['why']})"
                                                                 for m in run.unprotected_mounts), style="yellow")
            yield Text("")
        if run.redirected_saves and not run.file_changes:
            yield Text("Files the script saved during the run went to a scratch folder (yours were not touched):")
            for save in run.redirected_saves:
                yield Text(f"  {_path(save.get('path'))}{_where(save, '  ({})')}", style="dim")
            yield Text("")
        if run.tensorboard_dir:
            from pathlib import Path

            # The folder above this run's holds the earlier runs too: TensorBoard shows them side by side.
            yield Text(f"TensorBoard event files: {display_path(run.tensorboard_dir)}")
            yield Text(f"  view them with: tensorboard --logdir {display_path(Path(run.tensorboard_dir).parent)}",
                       style="dim")
            yield Text("")
        if run.baseline_suppressed:
            yield Text(f"{run.baseline_suppressed} finding(s) already in the baseline were left out.", style="dim")
        yield Text(_summary_line(report), style="bold")


_SPARKS = "▁▂▃▄▅▆▇█"
#: Changed paths the terminal report lists; the JSON report has them all.
_MAX_FILE_ROWS = 20


def sparkline(values: list[float], width: int = 40) -> str:
    """Values as block characters, lowest ▁ to highest █ (at most ``width``, evenly sampled)."""
    finite = [v for v in values if v == v and abs(v) != float("inf")]
    if not finite:
        return ""
    if len(values) > width:
        values = [values[round(i * (len(values) - 1) / (width - 1))] for i in range(width)]
    low, high = min(finite), max(finite)
    span = high - low or 1.0
    out = []
    for v in values:
        if v != v or abs(v) == float("inf"):
            out.append("!")
        else:
            out.append(_SPARKS[min(len(_SPARKS) - 1, int((v - low) / span * len(_SPARKS)))])
    return "".join(out)


def _glance(report: Report) -> Group | None:
    """The run's story in three lines: the loss, the largest gradients, each finding's number."""
    run = report.run
    if not run.loss_curve and not run.top_grad_layers:
        return None
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim", no_wrap=True, min_width=9)
    grid.add_column(overflow="fold")
    if run.loss_curve:
        curve = run.loss_curve
        grid.add_row(
            "loss", f"{sparkline(curve)}  {curve[0]:.4g} → {curve[-1]:.4g} ({len(curve)} step{'s' if len(curve) != 1 else ''})"
        )
    if run.top_grad_layers:
        layers = " · ".join(f"{item['name']} {item['norm']:.3g}" for item in run.top_grad_layers)
        grid.add_row("grad norm", f"{layers} (step {run.top_grad_layers[0]['step']})")
    for finding in report.findings:
        shown = proof(finding)
        if shown:
            grid.add_row(finding.code, display_paths_in(shown))
    return Group(Text("At a glance", style="bold"), Padding(grid, (0, 0, 1, 2)))


def epochs_note(run: RunSummary) -> str | None:
    """What the run did to the script's epochs when it shortened them without being asked."""
    cap = run.epochs
    if cap is None or cap.mode != "auto" or not cap.loaders:
        return None
    cuts = []
    for row in cap.loaders:
        full = f" of {row['full_batches']}" if row.get("full_batches") else ""
        kind = "validation loop" if row.get("validation") else "loop"
        cuts.append(f"{row.get('batches')}{full} batches{_where(row, f' ({kind} at {{}})')}")
    return (f"Epochs shortened to {', '.join(cuts)} to reach epoch boundaries within {run.steps_budget} steps; "
            "`--max-batches-per-epoch 0` runs full epochs.")


def _summary_line(report: Report) -> str:
    counts = {s: sum(1 for f in report.findings if f.severity == s) for s in Severity}
    parts = [
        f"{counts[Severity.ERROR]} error{'s' if counts[Severity.ERROR] != 1 else ''}",
        f"{counts[Severity.WARNING]} warning{'s' if counts[Severity.WARNING] != 1 else ''}",
        f"{counts[Severity.INFO]} info",
    ]
    return ", ".join(parts) + f" · run {_STATUS[report.run.status]}"


def _where(row: dict[str, Any], form: str) -> str:
    """``file:line`` of a located row put into ``form``, or '' when the place is unknown."""
    return form.format(display_loc((row.get("file"), row.get("line")))) if row.get("file") else ""


def _path(path: Any) -> str:
    return display_path(str(path)) if path else str(path)


def render(report: Report, width: int = 100) -> str:
    """The report as plain text at a fixed width (for files and tests)."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, highlight=False, soft_wrap=False)
    console.print(ReportView(report))
    return "".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines())


def print_report(report: Report, console: Console | None = None) -> None:
    """Print the report: with colour on a terminal; elsewhere plain, without trailing spaces."""
    import os
    import sys

    if console is None:
        console = Console(highlight=False)
    if console.is_terminal:
        console.print(ReportView(report))
        return
    # Piped into a file or a CI log: COLUMNS when set, else wide enough that tracebacks keep their lines.
    columns = os.environ.get("COLUMNS", "")
    width = int(columns) if columns.isdigit() and int(columns) > 0 else 120
    sys.stdout.write(render(report, width=width))
    sys.stdout.flush()


def _protection_words(run) -> str:  # noqa: ANN001
    """Which level kept the user's files untouched, in the report's words."""
    if run.file_protection == "kernel":
        folders = [display_path(f) for f in run.protected_folders]
        return ("kernel-level overlay on " + ", ".join("the working folder" if f == "." else f for f in folders)
                + ", Python-level guard elsewhere")
    return "Python-level guard" + (f"; no kernel-level layer: {run.protection_note}" if run.protection_note else "")
