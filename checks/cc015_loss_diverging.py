"""CC015 loss-diverging: a float32 loss that grows by about an order of magnitude, or grows and turns inf/NaN."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable

from convcheck.findings import Finding, Severity
from convcheck.losscurve import PROVEN_GROWTH, Divergence, Update, divergence, largest_update
from convcheck.registry import Check
from convcheck.runtime.trace import Event, ProcessTrace, RunTrace
from convcheck.static.context import StaticContext

#: ||dw|| / ||w|| per step of stable training (rule of thumb): the target of the suggested lr.
STABLE_RATIO = 1e-3
#: An adaptive optimizer's first steps move each weight by about lr (m / sqrt(v) is the gradient's sign), some
#: ten times its steady-state step: the target ratio on those steps.
ADAPTIVE_FIRST_RATIO = 1e-2
#: Steps counted as an adaptive optimizer's first.
FIRST_STEPS = 3
#: Updates this large (10x the stable ratio) explain a divergence; below it the growth may have another cause.
LARGE_RATIO = 1e-2
#: Optimizers that scale each parameter's step by its gradient history: their first steps move every weight by
#: about lr whatever the gradient, which a warmup tempers. RAdam rectifies its own first steps.
_ADAPTIVE = ("adam", "adamw", "adamax", "nadam", "rmsprop", "adagrad", "adadelta", "adafactor", "sparseadam",
             "lamb", "lion")


class LossDiverging(Check):
    """## What it does
    Follows the loss over the first steps of a run in float32 (or bfloat16) and reports one that diverges:

    - a finite loss that ends 8x or more above its level where it turned and above its first value (medians
      of 3 steps, so one noisy batch makes no curve), rising at 70% or more of the steps since the turn, or
      that jumped and stayed up (every later loss at least twice the level and their median 8x it, or their
      median 100x it: Adam at a huge lr jumps at its first step and brings a batch down now and then);
    - a loss that grows 8x or more from its lowest and from its first value and then turns inf/NaN, or turns
      inf/NaN right after a step that moved a weight matrix by more than its own norm.

    The finding names the step where the loss turned, the lr, and the largest update ratio ||dw|| / ||w||
    on the last measured step at or before the turn (the first steps) with the parameter it moved. It
    suggests an lr from the rule of thumb that stable training moves weights by about 1e-3 of their norm
    per step (lr x 1e-3 / observed ratio, rounded down to 1, 2 or 5 times a power of ten: an estimate; 1e-2
    on the first 3 steps of an adaptive optimizer, which then moves each weight by about lr),
    and a warmup where the optimizer is adaptive (Adam, AdamW, RMSprop, Adagrad...) and the lr does not
    rise over the steps observed.

    Severity: error when the run proved it (the loss grew 1000x or more, or grew and turned inf/NaN);
    warning for an 8x growth; info when the rise is not steady, when more than one optimizer
    steps (GANs, actor-critic), when the loss is negative (not a plain minimized loss), or when the largest
    measured update ratio is below 1e-2 (the growth may have another cause, such as targets that grow along
    an unshuffled dataset).

    ## Why is this bad?
    A learning rate far too large makes every step overshoot: the loss climbs instead of falling, the
    weights grow, and within a few steps the loss is inf/NaN and every later update writes NaN into the
    weights. Nothing crashes; the run only wastes its budget.

    ## Example
    ```python
    opt = torch.optim.AdamW(model.parameters(), lr=20)    # loss 8.67 -> 83.2 in 8 steps
    ```

    ## Use instead
    ```python
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    warmup = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=100)
    ```

    ## Fix
    Lower the learning rate to about the suggested value (an estimate from the update ratio), add a
    warmup for adaptive optimizers, and clip gradients (`clip_grad_norm_`) where single batches spike.

    ## Known limits
    It sees the first `--steps` steps only: a divergence that starts later is not seen. Update ratios are
    measured on steps 1-3 (and every 50th), on parameters that fit a 32 MB copy budget; without them the
    suggestion is "10x lower". Runs under fp16 autocast, a GradScaler or with float16 weights are CC007's.
    A loss that falls far and climbs back only part of the way, and a loss weighted by a factor the script
    raises on purpose (KL annealing), are judged by the curve alone. Losses that turn inf/NaN with no
    growth before them (log of 0, NaN inputs) are CC012's.
    """

    code = "CC015"
    name = "loss-diverging"
    severity = Severity.ERROR
    summary = "The loss grows by an order of magnitude or more within the first steps, or grows into inf/NaN."

    def check_runtime(self, run: RunTrace, ctx: StaticContext) -> Iterable[Finding]:
        proc = next(iter(run.trainers), None)
        if proc is None:
            return []
        found = divergence(proc)
        if found is None:
            return []
        return [self._finding(proc, found)]

    def _finding(self, proc: ProcessTrace, found: Divergence) -> Finding:
        update = largest_update(proc, before=found.nonfinite_from, near=found.turn_step)
        optimizer = _optimizer(proc, update)
        cls = optimizer.get("cls", "the optimizer")
        lr = update.lr if update is not None and update.lr is not None else _first_lr(proc, optimizer)
        severity, why = _severity(found, update)
        if found.by_update:
            said = (f"The loss was {found.high:.4g} at step {found.high_step} and is inf/NaN from step "
                    f"{found.nonfinite_from} on")
        elif found.jumped:
            after = [v for step, v in found.curve if step > found.turn_step]
            said = (f"The loss jumped from {found.low:.4g} (step {found.turn_step}) to {after[0]:.4g} and stayed far "
                    f"above: over the {len(after)} steps after, it was {_median(after):.4g} at the median "
                    f"({_times(_median(after) / found.low)}), {max(after):.4g} at most and {min(after):.4g} at least")
        else:
            said = (f"The loss rose from {found.low:.4g} (step {found.turn_step}) to {found.high:.4g} (step "
                    f"{found.high_step}), {_times(found.growth)}, rising at {found.steady:.0%} of the steps")
            if found.nonfinite_from is not None:
                said += f", and is inf/NaN from step {found.nonfinite_from} on"
        said += f", with {cls} at lr={lr:g}" if isinstance(lr, (int, float)) else f", with {cls}"
        said += ": the run is diverging."
        target = _target_ratio(update, optimizer)
        if update is not None:
            first = "; an adaptive optimizer on its first steps, about 1e-2" if target > STABLE_RATIO else ""
            said += (f" At step {update.step} the largest update measured moved `{update.name}` by ||dw||/||w|| = "
                     f"{update.ratio:.3g} (stable training moves weights by about {STABLE_RATIO:g} of their norm "
                     f"per step{first}).")
        if why:
            said += f" Less certain: {'; '.join(why)}."
        suggested = _suggested_lr(update, target)
        warmup = _needs_warmup(proc, optimizer)
        return self.finding(
            said, fix=_fix(suggested, lr, warmup, cls, target), location=optimizer.get("loc") or _loss_loc(proc),
            severity=severity, headline="growth",
            evidence={"turn_step": found.turn_step, "lowest_loss": found.low, "highest_loss": found.high,
                      "highest_step": found.high_step, "growth": round(found.growth, 4),
                      "rising_share": round(found.steady, 3), "jumped": found.jumped,
                      "nonfinite_from_step": found.nonfinite_from,
                      "curve": [[s, round(v, 6)] for s, v in found.curve[:20]], "optimizer": optimizer.get("cls"),
                      "lr": lr, "largest_update_ratio": update.ratio if update else None,
                      "update_step": update.step if update else None,
                      "update_param": update.name if update else None, "suggested_lr": suggested,
                      "suggest_warmup": warmup, "uncertain": found.uncertain},
        )


def _severity(found: Divergence, update: Update | None) -> tuple[Severity, list[str]]:
    """Error when the run proved it, warning for a steady growth, info with the reasons when unsure."""
    why = list(found.uncertain)
    if not found.steady_enough and found.nonfinite_from is None:
        why.append(f"the loss rose at only {found.steady:.0%} of the steps (noisy, not steady growth)")
    if update is not None and update.ratio < LARGE_RATIO:
        why.append(f"the largest measured update ratio is only {update.ratio:.2g}, so the step size may not be "
                   "the cause (the targets or the data may grow instead)")
    if why:
        return Severity.INFO, why
    if found.nonfinite_from is not None or found.growth >= PROVEN_GROWTH:
        return Severity.ERROR, why
    return Severity.WARNING, why


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _times(growth: float) -> str:
    if growth >= 1000:
        return f"{math.floor(math.log10(growth))} orders of magnitude"
    return f"{growth:.3g}x"


def _target_ratio(update: Update | None, optimizer: Event) -> float:
    """The update ratio a stable step would have where it was measured."""
    adaptive = optimizer.get("cls", "").lower() in _ADAPTIVE
    return ADAPTIVE_FIRST_RATIO if adaptive and update is not None and update.step <= FIRST_STEPS else STABLE_RATIO


def _suggested_lr(update: Update | None, target: float) -> float | None:
    """lr x target / observed ratio, rounded down to 1, 2 or 5 times a power of ten."""
    if update is None or update.lr is None or update.ratio <= target or update.lr <= 0:
        return None
    raw = update.lr * target / update.ratio
    power = 10.0 ** math.floor(math.log10(raw))
    mantissa = max(m for m in (1, 2, 5) if m * power <= raw * (1 + 1e-9))
    return float(f"{mantissa * power:.3g}")


def _needs_warmup(proc: ProcessTrace, optimizer: Event) -> bool:
    """An adaptive optimizer whose lr does not rise over the steps observed."""
    if optimizer.get("cls", "").lower() not in _ADAPTIVE:
        return False
    lrs = [e["lrs"][0] for e in proc.of("step")
           if e.get("opt") == optimizer.get("opt") and e.get("lrs") and isinstance(e["lrs"][0], (int, float))]
    return not any(b > a * 1.0001 for a, b in zip(lrs, lrs[1:]))


def _fix(suggested: float | None, lr: float | None, warmup: bool, cls: str, target: float) -> str:
    if suggested is not None:
        text = (f"Lower the learning rate to about {suggested:g} (an estimate: lr x {target:g} / the measured update "
                "ratio; try it and the values around it).")
    elif isinstance(lr, (int, float)):
        text = f"Lower the learning rate, 10x at a time from lr={lr:g}, until the loss falls over the first steps."
    else:
        text = "Lower the learning rate, 10x at a time, until the loss falls over the first steps."
    if warmup:
        text += (f" {cls} moves every weight by about lr on its first steps: warm the lr up, e.g. "
                 "`torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=500)` stepped each batch.")
    return text + " Clip gradients (`clip_grad_norm_(model.parameters(), 1.0)`) if single batches spike."


def _optimizer(proc: ProcessTrace, update: Update | None) -> Event:
    if update is not None:
        found = next((e for e in proc.of("optimizer") if e.get("opt") == update.opt), None)
        if found is not None:
            return found
    return proc.first("optimizer") or {}


def _first_lr(proc: ProcessTrace, optimizer: Event) -> float | None:
    step = next((e for e in proc.of("step") if e.get("opt") == optimizer.get("opt")), None)
    lrs = (step or {}).get("lrs") or []
    return lrs[0] if lrs and isinstance(lrs[0], (int, float)) else None


def _loss_loc(proc: ProcessTrace) -> list | None:
    return next((e.get("loc") for e in proc.of("backward") if e.get("loc")), None)
