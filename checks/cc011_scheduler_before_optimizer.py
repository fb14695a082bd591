"""CC011 scheduler-before-optimizer: scheduler.step() before optimizer.step(); a per-epoch schedule stepped per batch."""

from __future__ import annotations

import ast
import math
from collections.abc import Iterable
from typing import Any

from convcheck.findings import Finding, Severity
from convcheck.paths import display_loc
from convcheck.registry import Check
from convcheck.runtime.trace import Event, ProcessTrace, RunTrace
from convcheck.static.context import StaticContext, call_name

#: Schedulers whose settings are usually given in epochs (step_size=30, milestones=[30, 60], T_max=epochs).
_PER_EPOCH = frozenset({"StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR"})
#: The lr has collapsed when it falls to this share of its starting value.
_COLLAPSED = 0.1

_FIX_ORDER = (
    "Call `scheduler.step()` after `optimizer.step()` (since PyTorch 1.1): first the optimizer updates the "
    "weights with the current lr, then the scheduler moves to the next lr."
)
_FIX_PER_BATCH = (
    "Step a per-epoch scheduler once per epoch, after the batch loop; or, to schedule per batch, give its "
    "settings in batches (e.g. `T_max=epochs * len(loader)`, `step_size=k * len(loader)`)."
)


class SchedulerBeforeOptimizer(Check):
    """## What it does
    Follows every `lr_scheduler.step()` call against the optimizer steps (the scheduler's own step in
    its constructor is ignored). It reports:

    - `scheduler.step()` called before the first `optimizer.step()`: the old (pre-1.1) order, which
      skips the first value of the schedule;
    - a scheduler whose settings count epochs (`StepLR`, `MultiStepLR`, `ExponentialLR`,
      `CosineAnnealingLR`) stepped once per batch, so that the learning rate collapses within the first
      epoch. The finding shows the lr trajectory the run recorded and, from the scheduler's settings and
      the DataLoader's length, where the lr will be at the end of the first epoch.

    Without a run (`--static-only`), a `scheduler.step()` written before an `optimizer.step()` in the
    same loop is a warning.

    ## Why is this bad?
    With the scheduler stepped first, step 1 already trains with the second lr of the schedule: warm-up
    loses its first value and every decay comes one step early. A per-epoch schedule stepped per batch
    runs through its whole decay in a fraction of an epoch: `StepLR(step_size=30, gamma=0.1)` stepped
    every batch divides the lr by 1000 after 90 batches, and training then stalls with a learning rate
    near zero while the loss stops going down.

    ## Example
    ```python
    scheduler = StepLR(optimizer, step_size=30, gamma=0.1)   # 30 epochs
    for epoch in range(90):
        for x, y in loader:
            ...
            optimizer.step()
            scheduler.step()                                  # every batch
    ```

    ## Use instead
    ```python
    for epoch in range(90):
        for x, y in loader:
            ...
            optimizer.step()
        scheduler.step()                                      # every epoch
    ```

    ## Fix
    Call `optimizer.step()` before `scheduler.step()`, and step a scheduler as often as its settings
    assume: once per epoch for settings in epochs. Schedulers meant to be stepped per batch
    (`OneCycleLR`, `CyclicLR`, a `LambdaLR` over iterations) are not reported unless the run shows the
    lr collapsing. A step skipped by a `GradScaler` (inf/NaN gradients) is not an ordering mistake.

    ## Known limits
    The per-batch stepping of an epoch scheduler is judged from the schedulers torch ships (`StepLR`,
    `MultiStepLR`, `ExponentialLR`, `CosineAnnealingLR`); a custom or `LambdaLR` schedule cannot be told
    per-epoch from per-step.
    """

    code = "CC011"
    name = "scheduler-before-optimizer"
    severity = Severity.ERROR
    summary = "lr_scheduler.step() before optimizer.step(), or a per-epoch scheduler stepped every batch."
    needs = frozenset({"schedulers", "warnings"})

    _pending: list[Finding] = []

    def check_static(self, ctx: StaticContext) -> Iterable[Finding]:
        found = [
            self.finding(
                f"`{sched}` comes before `{opt}` (line {opt_line}) in the same loop: the scheduler moves to its "
                "next lr before the optimizer has used the current one.",
                fix=_FIX_ORDER, location=(ctx.display_path, line), severity=Severity.WARNING, source="static",
                evidence={"scheduler_call": sched, "optimizer_call": opt, "optimizer_line": opt_line},
            )
            for line, sched, opt_line, opt in static_order(ctx)
        ]
        return self.defer_static(found)

    def check_runtime(self, run: RunTrace, ctx: StaticContext) -> Iterable[Finding]:
        pending, self._pending = list(self._pending), []
        proc = next(iter(run.trainers), None)
        if proc is None or not proc.of("step"):
            return pending
        findings = []
        for sched, events in _schedulers(proc).items():
            user = [e for e in events if not e.get("internal")]
            if not user:
                continue
            order = self._before_optimizer(proc, events, user)
            if order is not None:
                findings.append(order)
            per_batch = self._per_batch(proc, events, user)
            if per_batch is not None:
                findings.append(per_batch)
        return findings

    def _before_optimizer(self, proc: ProcessTrace, events: list[Event], user: list[Event]) -> Finding | None:
        first = user[0]
        if first.get("step", 0) != 0:
            return None
        # A GradScaler that skipped the first step (inf gradients) leaves the count at 0: not this bug.
        for event in proc.events:
            if event is first:
                break
            if event["ev"] == "scaler" and event.get("call") == "step":
                return None
        first_step = proc.first("step")
        initial = _initial_lr(events)
        lr_at_step_1 = (first_step.get("lrs") or [None])[0] if first_step else None
        step_loc = first_step.get("loc") if first_step else None
        message = (
            f"`{first['cls']}.step()` at {display_loc(first.get('loc'))} ran before the first `optimizer.step()`"
            f"{' at ' + display_loc(step_loc) if step_loc else ''}: the first value of the schedule is skipped."
        )
        if initial is not None and lr_at_step_1 is not None and initial != lr_at_step_1:
            message += f" Step 1 trained with lr {lr_at_step_1:.4g} instead of the initial {initial:.4g}."
        warned = any("before `optimizer.step()`" in (w.get("message") or "") for w in proc.of("warning"))
        return self.finding(
            message, fix=_FIX_ORDER, location=first.get("loc"), severity=Severity.ERROR, headline="lr_at_step_1",
            evidence={"scheduler": first["cls"], "scheduler_loc": first.get("loc"), "optimizer_step_loc": step_loc,
                      "initial_lr": initial, "lr_at_step_1": lr_at_step_1, "pytorch_warned": warned,
                      "lr_by_step": _trajectory(proc)[:12]},
        )

    def _per_batch(self, proc: ProcessTrace, events: list[Event], user: list[Event]) -> Finding | None:
        cls = user[0]["cls"]
        steps = proc.of("step")
        if len(user) < 3 or not _stepped_every_batch(user):
            return None
        # Per batch: several scheduler steps inside one pass over the data.
        epochs = [e for e in proc.of("loader_epoch") if e.get("step", 0) > e.get("step_start", 0)]
        if epochs and len(user) <= len(epochs) + 1:
            return None
        initial = _initial_lr(events)
        if not initial:
            return None
        observed = [(e.get("step"), (e.get("lrs") or [None])[0]) for e in user]
        observed = [(n, lr) for n, lr in observed if lr is not None]
        lowest = min((lr for _, lr in observed), default=initial)
        batches = _batches_per_epoch(proc)
        settings = next((e.get("settings") for e in events if e.get("settings")), None) or {}
        projected = _project(cls, settings, initial, batches) if batches and cls in _PER_EPOCH else None
        collapsed_in_run = lowest <= _COLLAPSED * initial
        collapses = projected is not None and projected["lowest"] <= _COLLAPSED * initial
        if not collapsed_in_run and not collapses:
            return None
        if not collapsed_in_run and cls not in _PER_EPOCH:
            return None
        loc = user[0].get("loc")
        shown = ", ".join(f"{n}: {lr:.3g}" for n, lr in observed[:8])
        message = (
            f"`{cls}.step()` at {display_loc(loc)} runs once per optimizer step ({len(user)} scheduler steps in "
            f"{len(steps)} optimizer steps) and the learning rate collapses: lr by optimizer step {shown}"
        )
        if collapsed_in_run:
            message += f" — down to {lowest / initial:.2g}x the initial {initial:.3g} within this run."
        else:
            message += "."
        if projected is not None:
            message += (f" With {batches} batches per epoch, the schedule's settings ({_settings_text(settings)}) "
                        f"bring the lr down to {projected['lowest']:.3g} after {projected['lowest_after_batches']} "
                        f"batches, within the first epoch (and to {projected['end']:.3g} at its end).")
        return self.finding(
            message, fix=_FIX_PER_BATCH, location=loc,
            severity=Severity.ERROR, headline="lr_by_scheduler_step",
            evidence={"scheduler": cls, "settings": settings, "initial_lr": initial, "lr_by_scheduler_step":
                      observed[:20], "scheduler_steps": len(user), "optimizer_steps": len(steps),
                      "batches_per_epoch": batches, "first_epoch_projection": projected},
        )


def static_order(ctx: StaticContext) -> list[tuple[int, str, int, str]]:
    """``sched.step()`` calls that come before an optimizer's ``step()`` within the body of one loop."""
    found = []
    for loop in ast.walk(ctx.tree):
        if not isinstance(loop, (ast.For, ast.While)):
            continue
        calls = sorted((n for stmt in loop.body for n in ast.walk(stmt) if isinstance(n, ast.Call)),
                       key=lambda n: (n.lineno, n.col_offset))
        first_sched = None
        for call in calls:
            name = call_name(call) or ""
            owner, _, method = name.rpartition(".")
            if method != "step" or not owner:
                continue
            lowered = owner.rsplit(".", 1)[-1].lower()
            if "sched" in lowered and first_sched is None:
                first_sched = (call.lineno, name + "()")
            elif "opt" in lowered and first_sched is not None:
                found.append((first_sched[0], first_sched[1], call.lineno, name + "()"))
                break
            elif "opt" in lowered:
                break
    unique = {item[0]: item for item in found}
    return [unique[line] for line in sorted(unique)]


def _schedulers(proc: ProcessTrace) -> dict[Any, list[Event]]:
    found: dict[Any, list[Event]] = {}
    for event in proc.of("sched_step"):
        found.setdefault(event.get("sched", event.get("cls")), []).append(event)
    return found


def _stepped_every_batch(user: list[Event]) -> bool:
    """At most one optimizer step between consecutive scheduler steps, most of the time."""
    gaps = sorted(b.get("step", 0) - a.get("step", 0) for a, b in zip(user, user[1:]))
    return bool(gaps) and gaps[len(gaps) // 2] <= 1


def _initial_lr(events: list[Event]) -> float | None:
    internal = next((e for e in events if e.get("internal")), None)
    if internal and internal.get("lrs"):
        return internal["lrs"][0]
    return None


def _trajectory(proc: ProcessTrace) -> list[tuple[int, float]]:
    return [(e.get("n"), e["lrs"][0]) for e in proc.of("step") if e.get("lrs")]


def _batches_per_epoch(proc: ProcessTrace) -> int | None:
    """Batches in one epoch of the loader the training steps drew from."""
    for loader in proc.of("loader"):
        size, length = loader.get("batch_size"), loader.get("dataset_len")
        if not size or not length:
            continue
        trained = any(e.get("loader") == loader.get("id") and e.get("step", 0) > e.get("step_start", 0)
                      for e in proc.of("loader_epoch"))
        if trained or len(proc.of("loader")) == 1:
            return length // size if loader.get("drop_last") else math.ceil(length / size)
    return None


def _project(cls: str, settings: dict, initial: float, batches: int) -> dict[str, float] | None:
    """The lr after each of the first epoch's batches, from the scheduler's own formula."""
    def lr_at(t: int) -> float | None:
        if cls == "StepLR" and settings.get("step_size"):
            return initial * settings.get("gamma", 0.1) ** (t // int(settings["step_size"]))
        if cls == "MultiStepLR" and "milestones" in settings:
            return initial * settings.get("gamma", 0.1) ** sum(1 for m in settings["milestones"] if m <= t)
        if cls == "ExponentialLR" and "gamma" in settings:
            return initial * settings["gamma"] ** t
        if cls == "CosineAnnealingLR" and settings.get("T_max"):
            eta_min = settings.get("eta_min", 0.0)
            return eta_min + (initial - eta_min) * (1 + math.cos(math.pi * t / settings["T_max"])) / 2
        return None

    values = [lr_at(t) for t in range(batches + 1)]
    if any(v is None for v in values):
        return None
    lowest = min(values)
    return {"end": values[-1], "lowest": lowest, "lowest_after_batches": values.index(lowest)}


def _settings_text(settings: dict) -> str:
    shown = {k: v for k, v in settings.items() if k in ("step_size", "gamma", "milestones", "T_max", "eta_min")}
    return ", ".join(f"{k}={v}" for k, v in shown.items())
