"""What a check is: the base class every check derives from, and the extra runs it may ask for.

Which checks exist, and which are selected, is the catalog's job (``convcheck.catalog``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from convcheck.findings import Finding, Location, Severity

if TYPE_CHECKING:
    from convcheck.runtime.trace import RunTrace
    from convcheck.static.context import StaticContext


class CheckOptionError(ValueError):
    """A value under ``[tool.convcheck.checks.CODE]`` the check cannot use; the message says which and why."""


@dataclass(frozen=True)
class RunVariant:
    """Another run of the same script that a check needs as evidence (e.g. a repeat, a world size)."""

    nproc_per_node: int | None
    steps: int
    #: Every DataLoader repeats its first batch (can the model fit one batch?).
    repeat_first_batch: bool = False
    #: Where the main run's processes leave no core for this run's, this run is made after the main run
    #: instead of beside it, and only if ``needed`` says the main run's trace calls for it. None: always
    #: made, beside the main run.
    needed: Callable[[RunTrace], bool] | None = field(default=None, compare=False)
    #: Why the run may be left out and what is then not checked, for the report: completes "… run was
    #: not made: the main run's N processes fill the N cores, and …".
    left_out: str = field(default="", compare=False)
    #: For a run made after the main run: whether what it has made so far already settles the check's
    #: question, given the main run's trace; it is then stopped instead of run to its budget.
    settled: Callable[[RunTrace, RunTrace], bool] | None = field(default=None, compare=False)


class Check:
    """One check: a code, a stable kebab-case name, and static and/or runtime analysis.

    The class docstring is the check's documentation (``convcheck explain``): sections
    *What it does*, *Why is this bad?*, *Example*, *Use instead*, *Fix*.
    """

    code: ClassVar[str]
    name: ClassVar[str]
    #: Settings from ``[tool.convcheck.checks.CODE]``.
    options: dict[str, Any] = {}
    #: Set by the analysis before ``check_static``: True when ``check_runtime`` follows with a trace. A check
    #: that sees one bug both ways can then hold its static findings back and merge them into the runtime ones.
    runtime_follows: bool = False
    severity: ClassVar[Severity]
    summary: ClassVar[str]
    #: The recorders (``convcheck.runtime.recorders``) whose evidence this check reads, beyond what the probe
    #: always records (steps, losses, parameters and gradients, models, data loading, AMP, DDP, checkpoints).
    needs: ClassVar[frozenset[str]] = frozenset()

    def check_static(self, ctx: StaticContext) -> Iterable[Finding]:
        """Findings from the script's source alone."""
        return ()

    def defer_static(self, found: list[Finding]) -> list[Finding]:
        """Static findings, or none yet when a run follows: then they wait in ``self._pending``
        for ``check_runtime`` to confirm, merge or drop, so that one bug gives one finding."""
        if self.runtime_follows:
            self._pending = found
            return []
        return found

    def check_runtime(self, run: RunTrace, ctx: StaticContext) -> Iterable[Finding]:
        """Findings from what the run recorded (with the source for context)."""
        return ()

    def extra_runs(self, nproc_per_node: int | None, steps: int, ctx: StaticContext) -> dict[str, RunVariant]:
        """Further runs this check needs, by label; their traces arrive as ``run.variants[label]``.

        Runs with the same label are shared between checks and launched alongside the main run.
        """
        return {}

    @classmethod
    def evidence_kinds(cls) -> list[str]:
        """Which analyses this check implements: static, runtime, or both."""
        kinds = []
        if cls.check_static is not Check.check_static:
            kinds.append("static")
        if cls.check_runtime is not Check.check_runtime:
            kinds.append("runtime")
        return kinds

    @classmethod
    def documentation(cls) -> str:
        """The check's documentation, from its docstring."""
        return inspect.cleandoc(cls.__doc__ or cls.summary)

    def finding(
        self,
        message: str,
        *,
        fix: str,
        location: Location | tuple[str, int | None] | list[Any] | None = None,
        evidence: dict[str, Any] | None = None,
        severity: Severity | None = None,
        source: str = "runtime",
        headline: str | None = None,
    ) -> Finding:
        """A finding of this check; severity defaults to the check's own."""
        if location is not None and not isinstance(location, Location):
            path, line = location[0], location[1]
            location = Location(path=str(path), line=line)
        return Finding(
            code=self.code, name=self.name, severity=severity or self.severity, message=message,
            location=location, evidence=evidence or {}, fix=fix, source=source,  # type: ignore[arg-type]
            headline=headline,
        )
