"""Reading a run's loss curve: does the loss diverge (grow by about an order of magnitude, or grow and turn inf/NaN)?

Shared by CC015, which reports a diverging loss, and CC012, which leaves such a loss to it: one bug, one finding.
Only what the probe always records is read (losses per step, optimizer events, AMP events).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from convcheck.runtime.trace import Event, ProcessTrace

#: A finite loss whose recent median reaches this many times its lowest median has grown by about an order of
#: magnitude (a real AdamW run at lr 20 went 8.67 -> 83.2 in 8 steps: 9.6x).
GROWTH = 8.0
#: Growth of this many times within the first steps leaves no doubt.
PROVEN_GROWTH = 1000.0
#: Share of step-to-step rises over the rising stretch for the growth to count as steady.
STEADY = 0.7
#: An update ratio ||dw|| / ||w|| of at least this: one step replaced the weights.
HUGE_UPDATE = 1.0
#: Window of the running median that keeps one noisy batch from making a curve.
WINDOW = 3


@dataclass
class Divergence:
    """How a loss diverged: where it was lowest, where it ended up, and whether it turned inf/NaN."""

    #: The step from which the loss rose (its running median was lowest there).
    turn_step: int
    low: float
    #: The highest finite loss reached (median of the last window before inf/NaN, or at the end).
    high: float
    high_step: int
    growth: float
    #: Share of rises over the rising stretch (1.0: every step higher than the one before).
    steady: float
    #: The first step from which every loss is inf/NaN, when it came to that.
    nonfinite_from: int | None
    #: Finite losses by step, as observed.
    curve: list[tuple[int, float]] = field(default_factory=list)
    #: Something other than a plain minimized loss (several optimizers, negative or sign-changing losses).
    uncertain: list[str] = field(default_factory=list)
    #: Told by an update larger than the weights before an inf/NaN, not by the curve.
    by_update: bool = False

    #: It jumped at the turn and stayed far above (``high``: the median of the later losses, or of the last ones).
    jumped: bool = False

    @property
    def steady_enough(self) -> bool:
        return self.jumped or self.steady >= STEADY


def is_fp16_region(event: Event) -> bool:
    """Whether an ``autocast`` event entered an enabled float16 region."""
    dtype = str(event.get("dtype"))
    return bool(event.get("enabled")) and "float16" in dtype and "bfloat16" not in dtype


def fp16_run(proc: ProcessTrace) -> bool:
    """fp16 autocast, an enabled GradScaler, or float16 parameters that trained: CC007's domain, not divergence."""
    if proc.of("scaler"):
        return True
    if any(is_fp16_region(e) for e in proc.of("autocast")):
        return True
    trained = {i for e in proc.of("step") for i in e.get("grad") or []}
    return any(p.get("dtype") == "torch.float16" for m in proc.of("model") for p in m.get("params", [])
               if p.get("id") in trained)


def divergence(proc: ProcessTrace) -> Divergence | None:
    """The loss's divergence in a float32/bfloat16 run, or None when the curve shows none."""
    if fp16_run(proc):
        return None
    steps = max(proc.steps, 1)
    losses = [(s, v) for s, v in proc.losses_per_step().items() if s <= steps]
    if not losses:
        return None
    nonfinite = proc.nonfinite_from(at_least=1)
    finite = [(s, v) for s, v in losses if math.isfinite(v) and (nonfinite is None or s < nonfinite)]
    if not finite:
        return None
    uncertain = _uncertain(proc, [v for _, v in finite])
    if nonfinite is None:
        return _finite_growth(finite, uncertain)
    found = _into_nonfinite(finite, nonfinite, uncertain)
    if found is None:
        # Too few finite losses to see a curve, but a step that moved a weight matrix by more than its own
        # size just before the inf/NaN: the step size blew it up.
        update = largest_update(proc, before=nonfinite)
        if update is not None and update.ratio >= HUGE_UPDATE:
            step, value = finite[-1]
            found = Divergence(turn_step=finite[0][0], low=min(v for _, v in finite), high=value, high_step=step,
                               growth=value / min(v for _, v in finite) if min(v for _, v in finite) > 0 else 1.0,
                               steady=_steady([v for _, v in finite]), nonfinite_from=nonfinite, curve=finite,
                               uncertain=uncertain, by_update=True)
    return found


def _finite_growth(finite: list[tuple[int, float]], uncertain: list[str]) -> Divergence | None:
    """A finite loss that ends up GROWTH times or more above where it turned, and above its first value.

    The level at the turn is the median of the last (up to) WINDOW losses up to it; the level reached is the
    median of the last WINDOW losses, so one noisy batch makes neither. The growth counts as steady when the
    loss rose at most steps after the turn, or when it jumped and never came back (every later loss at least
    twice the level at the turn and their median GROWTH times it, or that median 100 times it): Adam at a
    huge lr jumps at its first step, and brings a batch back down now and then.
    """
    values = [v for _, v in finite]
    if len(values) < WINDOW + 1:
        return None
    tail = statistics.median(values[-WINDOW:])
    best: Divergence | None = None
    for i in range(len(values) - WINDOW):
        level = statistics.median(values[max(0, i - WINDOW + 1):i + 1])
        after = values[i + 1:]
        if level <= 0:
            continue
        middle, steady = statistics.median(after), _steady(values[i:])
        # Not steady, but jumped and stayed up: every later loss at least twice the level (or their median 100
        # times it, when an adaptive optimizer brings single batches back down now and then).
        jumped = steady < STEADY and middle >= GROWTH * level and middle >= values[0] and (
            min(after) >= 2 * level or middle >= 100 * level)
        if not jumped and (tail < GROWTH * level or tail < values[0]):
            continue
        high = max(tail, middle) if jumped else tail
        found = Divergence(turn_step=finite[i][0], low=level, high=high, high_step=finite[-1][0],
                           growth=high / level, steady=steady, nonfinite_from=None, curve=finite,
                           uncertain=uncertain, jumped=jumped)
        if best is None or (found.steady_enough, found.growth) > (best.steady_enough, best.growth):
            best = found
    return best


def _into_nonfinite(finite: list[tuple[int, float]], nonfinite: int,
                    uncertain: list[str]) -> Divergence | None:
    """A loss that grew, then turned inf/NaN: at least GROWTH times its lowest, and rising into the inf/NaN."""
    values = [v for _, v in finite]
    low_at = min(range(len(values)), key=lambda i: values[i])
    low, high = values[low_at], values[-1]
    # Against the first loss too: one low batch before a jump into NaN is noise, not a curve.
    if low <= 0 or high < GROWTH * low or high < GROWTH * values[0] or low_at == len(values) - 1:
        return None
    rising = values[low_at:]
    if len(rising) >= 3 and rising[-1] < rising[-2]:
        return None  # it fell again before the inf/NaN: no steady growth into it
    return Divergence(turn_step=finite[low_at][0], low=low, high=high, high_step=finite[-1][0], growth=high / low,
                      steady=_steady(rising), nonfinite_from=nonfinite, curve=finite, uncertain=uncertain)


def _steady(values: list[float]) -> float:
    """Share of step-to-step rises."""
    pairs = list(zip(values, values[1:]))
    return sum(1 for a, b in pairs if b > a) / len(pairs) if pairs else 0.0


def _uncertain(proc: ProcessTrace, values: list[float]) -> list[str]:
    """Why this loss may not be one the run minimizes (then growth is no proof of divergence)."""
    why = []
    optimizers = {e.get("opt") for e in proc.of("optimizer")}
    if len(optimizers) > 1:
        why.append(f"{len(optimizers)} optimizers step (adversarial or actor-critic training, whose losses "
                   "need not fall)")
    if any(v < 0 for v in values):
        why.append("the loss is negative at some steps (not a plain minimized loss such as cross-entropy or MSE)")
    return why


@dataclass
class Update:
    """The largest measured step ||dw|| / ||w||: how far one optimizer step moved a parameter."""

    ratio: float
    step: int
    param: int
    name: str
    opt: int | None
    #: The lr of the parameter's group at that step.
    lr: float | None


def largest_update(proc: ProcessTrace, before: int | None = None, near: int | None = None) -> Update | None:
    """The largest finite update ratio measured on a step before ``before``: weight matrices first (a
    zero-initialized bias moves by an infinite ratio), any parameter when no weight matrix was measured.

    With ``near``, on the last measured step at or before it (else the first measured step): once a loss
    diverges the weights blow up and later ratios say nothing about the lr that started it.
    """
    shapes = {p["id"]: p.get("shape") for m in proc.of("model", "unregistered_module") for p in m.get("params", [])}
    names = proc.param_names()
    groups = {e.get("opt"): e.get("groups") or [] for e in proc.of("optimizer")}
    found: list[tuple[bool, Update]] = []
    for step in proc.of("step"):
        ratios = step.get("update_ratios")
        if not ratios or (before is not None and step.get("n", 0) >= before):
            continue
        params = [i for g in groups.get(step.get("opt"), []) for i in g.get("params", [])]
        if len(params) != len(ratios):
            continue
        for param, ratio in zip(params, ratios):
            if ratio is None or not math.isfinite(ratio):
                continue
            group = next(g for g, grp in enumerate(groups[step.get("opt")]) if param in grp.get("params", []))
            lrs = step.get("lrs") or []
            lr = lrs[group] if group < len(lrs) and isinstance(lrs[group], (int, float)) else None
            weight = len(shapes.get(param) or []) >= 2
            found.append((weight, Update(ratio=ratio, step=step.get("n", 0), param=param,
                                         name=names.get(param, f"parameter {param}"), opt=step.get("opt"), lr=lr)))
    if not found:
        return None
    if near is not None:
        measured = sorted({u.step for _, u in found})
        at = max((s for s in measured if s <= near), default=measured[0])
        found = [(w, u) for w, u in found if u.step == at]
    pool = [u for w, u in found if w] or [u for _, u in found]
    return max(pool, key=lambda u: u.ratio)
