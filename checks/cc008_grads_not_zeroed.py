"""CC008 grads-not-zeroed: gradients that pile up across optimizer steps, or are cleared before the step uses them."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from convcheck.findings import Finding, Severity
from convcheck.paths import display_loc
from convcheck.registry import Check
from convcheck.runtime.trace import ProcessTrace, RunTrace
from convcheck.static.context import StaticContext, call_name, dotted_name

if TYPE_CHECKING:
    # Types only: the events stay the dicts the trace holds, and the schemas cost nothing at run time.
    from convcheck.runtime.events import BackwardEvent, StepEvent, ZeroGradEvent

_FIX_MISSING = (
    "Clear the gradients once per optimizer step: call `optimizer.zero_grad()` right after `optimizer.step()` "
    "(or before the forward pass). For gradient accumulation, clear them after the step that consumes the "
    "accumulated micro-batches, not only once per epoch."
)
_FIX_ACCUMULATION = (
    "Clear the gradients once per optimizer step, not once per micro-batch: call `optimizer.zero_grad()` right "
    "after `optimizer.step()` (outside the micro-batch loop), and divide each micro-batch's loss by the number "
    "of micro-batches."
)
_FIX_MISPLACED = (
    "Move `zero_grad()` out from between `backward()` and `step()`: call it after `optimizer.step()` or before "
    "the forward pass, so that the step sees the gradients backward() just computed."
)


@dataclass
class _Segment:
    """What happened between two steps of one optimizer."""

    step: StepEvent
    backwards: list[BackwardEvent] = field(default_factory=list)
    #: (zero_grad event, backwards seen before it in this segment).
    clears: list[tuple[ZeroGradEvent, int]] = field(default_factory=list)


def segments(proc: ProcessTrace) -> dict[int, list[_Segment]]:
    """Per optimizer, the backwards and gradient clears leading up to each of its steps."""
    by_opt: dict[int, list[_Segment]] = {}
    backwards: list[BackwardEvent] = []
    clears: list[tuple[ZeroGradEvent, int, int]] = []  # event, backwards before it, optimizer (-1: any/unknown)
    starts: dict[int, tuple[int, int]] = {}  # optimizer -> (backward index, clear index) where its segment starts
    for event in proc.events:
        kind = event["ev"]
        # The trace's schemas (convcheck.runtime.events) type each kind; .get() where recorded traces may omit a field.
        if kind == "backward":
            backwards.append(cast("BackwardEvent", event))
        elif kind == "zero_grad":
            clear = cast("ZeroGradEvent", event)
            opt = clear.get("opt") if clear.get("kind") == "optimizer" else None
            clears.append((clear, len(backwards), -1 if opt is None else int(opt)))
        elif kind == "step":
            step = cast("StepEvent", event)
            opt = int(step.get("opt") or 0)
            b0, c0 = starts.get(opt, (0, 0))
            segment = _Segment(step=step, backwards=backwards[b0:])
            for clear, at, target in clears[c0:]:
                if target in (-1, opt):
                    segment.clears.append((clear, at - b0))
            by_opt.setdefault(opt, []).append(segment)
            starts[opt] = (len(backwards), len(clears))
    return by_opt


class GradsNotZeroed(Check):
    """## What it does
    Follows, for each optimizer, the `backward()` calls and gradient clears (`optimizer.zero_grad()`,
    `model.zero_grad()`) between its steps. It reports two mistakes:

    - gradients never cleared between two steps, so each step adds the new gradient to every earlier
      one (`zero_grad()` missing, or called once per epoch);
    - `zero_grad()` called between `backward()` and `step()`, so the step finds no gradient and
      nothing is updated;
    - `zero_grad()` called before every micro-batch of a gradient accumulation, so each step sees only
      the last micro-batch's gradient (several `backward()` calls from one line per step, each after a
      clear; closure steps such as LBFGS, and SAM-style or adversarial steps whose backward passes come
      from different lines, are not reported).

    Before the first `backward()` after a step, the run measures the gradients that backward is about
    to add to: a non-zero norm proves that the earlier step's gradients were still there (clearing them
    by hand with `p.grad = None` is recognised and not reported). Without a run (`--static-only`), a
    script that calls `backward()` and `step()` but never clears a gradient is a warning.

    ## Why is this bad?
    Gradients accumulate in `.grad` until something clears them. Without a clear, step `t` moves the
    weights along the sum of all gradients since the start: the effective learning rate grows with
    every step, the direction is dominated by stale batches, and the loss stalls or diverges. A clear
    between `backward()` and `step()` throws the fresh gradients away: the model never trains.

    ## Example
    ```python
    for x, y in loader:
        loss = criterion(model(x), y)
        loss.backward()          # adds to the gradients of every previous batch
        optimizer.step()
    ```

    ## Use instead
    ```python
    for x, y in loader:
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
    ```

    ## Fix
    Call `optimizer.zero_grad()` once per optimizer step, after `step()` or before the forward pass.
    Gradient accumulation (several `backward()` calls per `step()`, cleared after each step) is
    intended and not reported.

    ## Known limits
    Gradients cleared by hand (`p.grad = None`) are recognised only on steps whose gradients were measured.
    Accumulation whose micro-batches come from different source lines is not judged (SAM-style and adversarial
    steps look the same).
    """

    code = "CC008"
    name = "grads-not-zeroed"
    severity = Severity.ERROR
    summary = "Gradients accumulate across optimizer steps, or are cleared between backward() and step()."

    _pending: list[Finding] = []

    def check_static(self, ctx: StaticContext) -> Iterable[Finding]:
        found = list(_static(self, ctx))
        return self.defer_static(found)

    def check_runtime(self, run: RunTrace, ctx: StaticContext) -> Iterable[Finding]:
        pending, self._pending = list(self._pending), []
        proc = next(iter(run.trainers), None)
        if proc is None or not proc.of("step"):
            return pending
        findings = []
        for opt, segs in sorted(segments(proc).items()):
            findings += self._misplaced(opt, segs)
            findings += self._not_cleared(opt, segs)
            findings += self._accumulation_wiped(opt, segs)
        return findings

    # -- zero_grad before every micro-batch of an accumulation ------------------------------------------

    def _accumulation_wiped(self, opt: int, segs: list[_Segment]) -> list[Finding]:
        """Several backward() calls from one line per step, each after a clear: only the last one counts.

        Closure steps (LBFGS) clear and re-run backward by design; SAM-style and adversarial steps run
        their backward passes from different lines: neither is reported.
        """
        wiped = [seg for seg in segs if _each_backward_cleared(seg)]
        if len(wiped) < 2 or len(wiped) * 2 < len(segs):
            return []
        seg = wiped[0]
        count = len(seg.backwards)
        clear = seg.clears[-1][0]
        loc = clear.get("loc")
        backward_loc = seg.backwards[-1].get("loc")
        message = (
            f"`zero_grad()` at {display_loc(loc)} clears the gradients before each of the {count} `backward()` calls "
            f"at {display_loc(backward_loc)} that lead to every step of optimizer {opt} ({len(wiped)} of {len(segs)} "
            f"steps): each step uses only the last micro-batch's gradient, so the accumulation over {count} "
            f"micro-batches silently trains on a batch {count}× smaller."
        )
        return [self.finding(
            message, fix=_FIX_ACCUMULATION, location=loc, severity=Severity.ERROR, headline="micro_batches_discarded",
            evidence={"optimizer": opt, "backwards_per_step": count, "micro_batches_discarded": count - 1,
                      "steps": [s.step.get("n") for s in wiped][:20], "steps_total": len(segs),
                      "zero_grad_loc": loc, "backward_loc": backward_loc},
        )]

    # -- zero_grad between backward and step -------------------------------------------------------

    def _misplaced(self, opt: int, segs: list[_Segment]) -> list[Finding]:
        wiped = []
        for seg in segs:
            if not seg.backwards or not seg.clears:
                continue
            clear, before = seg.clears[-1]
            if before == 0 or before < len(seg.backwards):
                continue  # a backward came after the last clear: the step sees fresh gradients
            norms = seg.step.get("grad_norms")
            no_grad = not seg.step.get("grad")
            all_zero = norms is not None and bool(norms) and all(n == 0 for n in norms)
            if no_grad or all_zero:
                wiped.append((seg, clear, "none" if no_grad else "zero"))
        if not wiped:
            return []
        seg, clear, how = wiped[0]
        steps = [s.step.get("n") for s, _, _ in wiped]
        loc = clear.get("loc")
        where = f" at {display_loc(loc)}" if loc else ""
        state = "no parameter had a gradient" if how == "none" else "every gradient was zero"
        return [self.finding(
            f"`zero_grad()`{where} runs after `backward()` and before `step()` of optimizer {opt}: at "
            f"{len(wiped)} of {len(segs)} steps (first: step {steps[0]}) {state} when `step()` ran, so the "
            "step updated nothing.",
            fix=_FIX_MISPLACED, location=loc, severity=Severity.ERROR, headline="gradients_at_step",
            evidence={"optimizer": opt, "steps": steps[:20], "steps_total": len(segs),
                      "backwards_before_clear": len(seg.backwards), "gradients_at_step": how,
                      "zero_grad_loc": loc, "step_loc": seg.step.get("loc")},
        )]

    # -- no clear between steps ---------------------------------------------------------------------

    def _not_cleared(self, opt: int, segs: list[_Segment]) -> list[Finding]:
        uncleared = [seg for seg in segs[1:] if seg.backwards and not seg.clears]
        if not uncleared:
            return []
        proven, cleared_by_hand = [], []
        for seg in uncleared:
            stale = seg.backwards[0].get("stale_grads")
            if stale is None or stale.get("opt") != opt:
                continue
            if stale.get("present") and (stale.get("norm") or 0) > 0:
                proven.append((seg, stale))
            else:
                cleared_by_hand.append(seg)
        if cleared_by_hand and not proven:
            return []  # gradients were gone before the next backward: cleared some other way
        first = uncleared[0]
        backward_loc = first.backwards[0].get("loc")
        steps = [seg.step.get("n") for seg in uncleared]
        clears_seen = sum(1 for seg in segs if seg.clears)
        how = ("`zero_grad()` is never called" if clears_seen == 0 else
               f"gradients were cleared before only {clears_seen} of {len(segs)} steps")
        trend = _grad_norm_trend(segs)
        evidence: dict[str, Any] = {
            "optimizer": opt, "steps_without_clear": steps[:20], "steps_total": len(segs),
            "steps_with_clear": clears_seen, "backward_loc": backward_loc, "step_loc": first.step.get("loc"),
        }
        if trend:
            evidence["grad_norm_by_step"] = trend
        if proven:
            seg, stale = proven[0]
            evidence["stale_gradient"] = {"before_step": seg.step.get("n"), "norm": stale.get("norm"),
                                          "parameters_with_gradient": stale.get("present"),
                                          "parameters": stale.get("of")}
            message = (
                f"Gradients of optimizer {opt} are not cleared between steps: {how}. Before step "
                f"{seg.step.get('n')}, `backward()` at {display_loc(backward_loc)} added to gradients left from "
                f"earlier steps (norm {stale.get('norm'):.4g} on {stale.get('present')} of {stale.get('of')} "
                "parameters), so every step uses the sum of all gradients so far."
            )
            severity = Severity.ERROR
        else:
            message = (
                f"Gradients of optimizer {opt} may not be cleared between steps: {how}, and the run did not "
                f"measure whether they were cleared some other way before `backward()` at {display_loc(backward_loc)}."
            )
            severity = Severity.WARNING
        if trend and len(trend) >= 2:
            message += " Gradient norm by step: " + ", ".join(f"{n}: {v:.3g}" for n, v in trend[:6]) + "."
        return [self.finding(message, fix=_FIX_MISSING, location=backward_loc, severity=severity,
                             evidence=evidence, headline="stale_gradient" if proven else "steps_without_clear")]


def _static(check: Check, ctx: StaticContext) -> Iterable[Finding]:
    """A script that calls backward() and an optimizer's step() but never clears a gradient."""
    backwards, steps, clears = [], [], False
    for node in ast.walk(ctx.tree):
        if isinstance(node, ast.Call):
            last = (call_name(node) or "").rsplit(".", 1)[-1]
            if last == "backward":
                backwards.append(node)
            elif last == "step" and not node.args and "sched" not in (call_name(node) or "").lower():
                steps.append(node)
            elif last in ("zero_grad", "zero_", "clear_grad", "requires_grad_"):
                clears = True
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any((dotted_name(t) or "").endswith(".grad") or isinstance(t, ast.Attribute) and t.attr == "grad"
                   for t in targets):
                clears = True
    if clears or not backwards or not steps:
        return
    first = min(backwards, key=lambda n: (n.lineno, n.col_offset))
    yield check.finding(
        "The script calls `backward()` and `step()` but never clears the gradients (no `zero_grad()`, no "
        "`p.grad = None`): each step would add the new gradient to all earlier ones.",
        fix=_FIX_MISSING, location=(ctx.display_path, first.lineno), severity=Severity.WARNING, source="static",
        evidence={"backward_lines": sorted(n.lineno for n in backwards)[:10],
                  "step_lines": sorted(n.lineno for n in steps)[:10]},
    )


def _each_backward_cleared(seg: _Segment) -> bool:
    """Two or more backward() calls from one line in a plain step, each preceded by its own clear."""
    if len(seg.backwards) < 2 or seg.step.get("closure"):
        return False
    lines = {tuple(b.get("loc") or ()) for b in seg.backwards}
    if len(lines) != 1 or lines == {()}:
        return False
    cleared_before = {before for _, before in seg.clears}
    return all(index in cleared_before for index in range(len(seg.backwards)))


def _grad_norm_trend(segs: list[_Segment]) -> list[tuple[int, float]]:
    trend = []
    for seg in segs:
        norms = seg.step.get("grad_norms")
        if norms:
            trend.append((seg.step.get("n"), sum(n * n for n in norms) ** 0.5))
    return trend
