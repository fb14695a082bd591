"""The data model every check produces and every reporter reads."""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

REPORT_VERSION = 1


class Severity(str, Enum):
    """How certain a finding is: error when the run proved it."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        """Larger is more severe."""
        return {"info": 1, "warning": 2, "error": 3}[self.value]


class Location(BaseModel):
    """A place in the user's code."""

    model_config = ConfigDict(frozen=True)

    path: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.line}" if self.line else self.path


class Finding(BaseModel):
    """One located problem, with the evidence that shows it and the fix."""

    model_config = ConfigDict(frozen=True)

    code: str
    name: str
    severity: Severity
    message: str
    location: Location | None = None
    evidence: dict[str, Any] = Field(default_factory=dict)
    fix: str = ""
    source: Literal["static", "runtime", "static+runtime"] = "runtime"
    #: The evidence key whose value proves the finding at a glance (the terminal view shows it).
    headline: str | None = None


class ProcessSummary(BaseModel):
    """What one process of the run did."""

    pid: int
    rank: int | None = None
    role: str = "worker"
    exit_code: int | None = None
    steps: int = 0
    #: Optimizer steps the GradScaler skipped (inf/NaN gradients); not counted in ``steps``.
    skipped_steps: int = 0
    backwards: int = 0
    crashed: bool = False
    error: str | None = None


class EpochCap(BaseModel):
    """How epochs were shortened so that the step budget reaches the script's own epoch boundaries."""

    #: auto: a training loop's long epochs end after ``steps_per_epoch`` optimizer steps;
    #: fixed: every loader's epochs end after ``batches`` batches; off: full epochs.
    mode: Literal["auto", "fixed", "off"]
    steps_per_epoch: int | None = None
    batches: int | None = None
    #: auto: each loader whose epochs were ended early: ``{"loader", "batches", "full_batches", "file", "line",
    #: "validation"}`` (``full_batches`` null for a loader without a length); the ``for`` statement that pulled it;
    #: ``validation``: passes without a step, under ``torch.no_grad()``, shortened alongside the training passes.
    loaders: list[dict[str, Any]] = Field(default_factory=list)


class RunSummary(BaseModel):
    """How the run went: its outcome and what each process did."""

    status: Literal[
        "completed", "stopped-at-budget", "no-training-step", "crashed", "timeout",
        "interrupted", "not-run", "static-only",
    ] = "not-run"
    steps_budget: int = 0
    nproc_per_node: int = 1
    wall_seconds: float = 0.0
    processes: list[ProcessSummary] = Field(default_factory=list)
    error: str | None = None
    hung_at: list[str] = Field(default_factory=list)
    redirected_saves: list[dict[str, Any]] = Field(default_factory=list)
    #: Every path outside the run's folders the script created, wrote, appended, renamed or deleted:
    #: ``{"op", "path", "to", "file", "line"}``; ``to`` is the run's copy (deleted after the run),
    #: null for a deletion, which is recorded and not performed.
    file_changes: list[dict[str, Any]] = Field(default_factory=list)
    #: What kept the user's files untouched: "kernel" (an overlayfs mount namespace under the folders in
    #: ``protected_folders``, with the Python-level guard everywhere) or "python" (the copy-on-write guard
    #: in every Python process only; ``protection_note`` says why there was no kernel-level layer).
    file_protection: str | None = None
    protected_folders: list[str] = Field(default_factory=list)
    #: Mounts below a protected folder that the kernel-level layer passed through: ``{"path", "why"}``.
    unprotected_mounts: list[dict[str, Any]] = Field(default_factory=list)
    protection_note: str | None = None
    script_argv: list[str] = Field(default_factory=list)
    #: How the main run's workers started: "forkserver" (forked from one process that imported torch;
    #: they share Python's string-hash seed) or "spawn" (a fresh interpreter each); None when not run here.
    worker_start: str | None = None
    #: The runs checks asked for besides the main run, as evidence: ``{"label", "check", "processes",
    #: "steps", "steps_made", "when"}`` (``steps`` the budget asked for, ``steps_made`` the most one
    #: process made; ``when``: "beside" the main run, "after" it, or "left-out" with ``why``).
    #: ``stopped_early``: a run made after the main one was stopped once it had settled its check.
    extra_runs: list[dict[str, Any]] = Field(default_factory=list)
    #: CUDA usage that was mapped onto the CPU (first use of each kind, with the user's line).
    device_mapping: list[dict[str, Any]] = Field(default_factory=list)
    #: CUDA features with no CPU equivalent that stopped the run.
    unmappable: list[dict[str, Any]] = Field(default_factory=list)
    #: Places where convcheck's own recording failed and the script's call ran unrecorded.
    probe_errors: list[str] = Field(default_factory=list)
    #: Mean loss per optimizer step of the first training process (for the terminal view).
    loss_curve: list[float] = Field(default_factory=list)
    #: The layers with the largest gradient norm at the last sampled step: name and norm.
    top_grad_layers: list[dict[str, Any]] = Field(default_factory=list)
    #: Where --tensorboard wrote this run's event files.
    tensorboard_dir: str | None = None
    #: Findings left out because the --baseline file already lists them.
    baseline_suppressed: int = 0
    #: Shortened epochs (None: not known, e.g. a static-only run).
    epochs: EpochCap | None = None


class Report(BaseModel):
    """The whole result of a convcheck run; its JSON form is versioned."""

    version: int = REPORT_VERSION
    script: str
    findings: list[Finding] = Field(default_factory=list)
    run: RunSummary = Field(default_factory=RunSummary)

    def at_or_above(self, level: Severity) -> list[Finding]:
        """The findings at least as severe as ``level``."""
        return [f for f in self.findings if f.severity.rank >= level.rank]
