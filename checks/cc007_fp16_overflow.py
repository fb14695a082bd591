"""CC007 fp16-overflow: values beyond fp16's range under autocast, and GradScaler misuse."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from convcheck.findings import Finding, Severity
from convcheck.losscurve import is_fp16_region
from convcheck.registry import Check
from convcheck.runtime.trace import Event, ProcessTrace, RunTrace
from convcheck.static.context import StaticContext, dotted_name
from convcheck.static.flow import import_aliases, keyword, last_segment, resolved_call, user_location

FP16_MAX = 65504.0
BF16_MAX = 3.38e38
#: Below half of float16's smallest subnormal (5.96e-8) a value rounds to 0.
FP16_TINY = 2.98e-8

_FIX_OVERFLOW = (
    "Use bfloat16 autocast (`torch.autocast(device, dtype=torch.bfloat16)`), which has fp32's range and "
    "needs no GradScaler; or keep this module in fp32 (`with torch.autocast(device, enabled=False):` around "
    "it, inputs cast with `.float()`); or normalize its inputs so they stay well below 65504."
)
_FIX_CLIP = (
    "Call `scaler.unscale_(optimizer)` before `clip_grad_norm_`, then `scaler.step(optimizer)` and "
    "`scaler.update()`: clipping scaled gradients compares the threshold with gradients multiplied by the scale."
)
_FIX_STEP = (
    "Call `scaler.step(optimizer)` (then `scaler.update()`) instead of `optimizer.step()`: scaler.step unscales "
    "the gradients and skips the step when they hold inf/NaN."
)
_FIX_HALF_PARAMS = (
    "Keep the parameters in float32 and get the speed from autocast: `torch.autocast(device, dtype=torch.float16)` "
    "with a GradScaler, or `dtype=torch.bfloat16` (no scaler needed). If the weights must stay float16, use an "
    "eps float16 can hold (e.g. `Adam(..., eps=1e-4)`) and keep a float32 master copy for the update."
)
_FIX_UPDATE = "Call `scaler.update()` once per iteration, after `scaler.step(optimizer)`."
_FIX_NO_SCALER = (
    "Create `scaler = torch.amp.GradScaler(device)` and use `scaler.scale(loss).backward()`, "
    "`scaler.step(optimizer)`, `scaler.update()`; or use bfloat16 autocast, which needs no scaler."
)
_FIX_COLLAPSE = (
    "Find what overflows (see the module reported, or run with fp32 for a few steps): usually a learning rate "
    "that is too high, unnormalized inputs, or an op that must stay in fp32; bfloat16 autocast avoids fp16's "
    "small range."
)


class Fp16Overflow(Check):
    """## What it does
    Under fp16 autocast it finds the first module whose output became inf or NaN, with the range of its
    input, and recomputes that module in fp32 to confirm fp16's range is to blame (and whether bfloat16
    would fit). It follows the GradScaler through the run: a scale that keeps collapsing and the share of
    skipped steps, `clip_grad_norm_` on still-scaled gradients (before `scaler.unscale_`), `optimizer.step()`
    called instead of `scaler.step()`, `scaler.update()` never called, and fp16 autocast with no scaler at
    all. From the source it finds the same call-order mistakes. It also finds a model trained in float16
    itself (`model.half()`, no autocast) whose loss turns inf/NaN for good, and names the optimizer setting
    float16 cannot hold (Adam's default `eps=1e-8` rounds to 0).

    ## Why is this bad?
    fp16 cannot hold values above 65504: an activation beyond that becomes inf, the loss NaN, and the
    GradScaler skips the step and halves its scale, again and again. Clipping scaled gradients clips at a
    threshold thousands of times too small (or never), `optimizer.step()` applies scaled gradients (a
    learning rate multiplied by the scale), a missing `update()` never adapts the scale, and fp16 without a
    scaler lets small gradients underflow to zero.

    ## Example
    ```python
    scaler = torch.amp.GradScaler("cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        loss = criterion(model(x), y)
    scaler.scale(loss).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # gradients are still scaled
    scaler.step(optimizer)
    scaler.update()
    ```

    ## Use instead
    ```python
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(optimizer)
    scaler.update()
    ```

    ## Fix
    Keep the order scale → backward → unscale_ → clip → scaler.step → update. For values beyond fp16's
    range, switch to bfloat16 autocast (no scaler needed) or keep the overflowing module in fp32.
    Occasional skipped steps that recover are normal and not reported.

    ## Known limits
    fp16 overflow is found under CPU fp16 autocast, which keeps softmax and sums in fp16 where CUDA uses fp32:
    each overflow is recomputed in fp32 before fp16 is blamed, but a GPU may overflow in places a CPU run does
    not. bfloat16 underflow, custom CUDA kernels and fused optimizers are not checked.
    """

    code = "CC007"
    name = "fp16-overflow"
    severity = Severity.ERROR
    summary = "inf/NaN under fp16 autocast (first module, input range); GradScaler misuse and collapsing scale."

    _pending: list[Finding]

    # -- static ------------------------------------------------------------------------------

    def check_static(self, ctx: StaticContext) -> Iterable[Finding]:
        found = list(self._static(ctx))
        return self.defer_static(found)

    def _static(self, ctx: StaticContext) -> Iterable[Finding]:
        for site in static_misuse(ctx):
            fix, severity, message = _STATIC_TEXT[site.kind]
            yield self.finding(message.format(**site.names), fix=fix, location=(ctx.display_path, site.line),
                               severity=severity, source="static", evidence={"kind": site.kind})

    # -- runtime -----------------------------------------------------------------------------

    def check_runtime(self, run: RunTrace, ctx: StaticContext) -> Iterable[Finding]:
        pending = list(getattr(self, "_pending", []))
        self._pending = []
        proc = next(iter(run.trainers), None)
        if proc is None:
            return pending
        findings: list[Finding] = []
        for kind, finding in self._runtime(proc, ctx):
            twin = next((p for p in pending if p.evidence.get("kind") == kind), None)
            if twin is not None:
                pending.remove(twin)
                finding = finding.model_copy(update={"location": twin.location or finding.location,
                                                     "source": "static+runtime"})
            findings.append(finding)
        # Call-order suspicions that the run contradicts (it did that part right) are dropped.
        contradicted = _contradicted(proc)
        pending = [p for p in pending if p.evidence.get("kind") not in contradicted]
        return [*findings, *pending]

    def _runtime(self, proc: ProcessTrace, ctx: StaticContext) -> Iterable[tuple[str, Finding]]:
        fp16 = _fp16(proc)
        scaler = proc.of("scaler")
        half = self._half_params(proc, ctx)
        if half is not None:
            yield "half-params", half
        overflow = self._overflow(proc, ctx)
        if overflow is not None:
            yield "overflow", overflow
        if scaler:
            yield from self._scaler_misuse(proc, ctx)
            collapse = self._collapse(proc, ctx, reported=overflow is not None)
            if collapse is not None:
                yield "collapse", collapse
        elif fp16 and fp16_backwards(proc):
            autocast = next(e for e in proc.of("autocast") if is_fp16_region(e))
            message = (f"fp16 autocast ({autocast.get('device')}) ran {len(proc.of('backward'))} backward passes "
                       "with no GradScaler: gradients smaller than fp16's smallest value (6e-8) underflow to 0 "
                       "and are lost.")
            yield "no-scaler", self.finding(message, fix=_FIX_NO_SCALER, severity=Severity.WARNING,
                                            location=user_location(autocast.get("loc"), ctx),
                                            evidence={"backward_calls": len(proc.of("backward")),
                                                      "autocast_dtype": autocast.get("dtype")})

    def _half_params(self, proc: ProcessTrace, ctx: StaticContext) -> Finding | None:
        """Parameters trained in float16 itself (``model.half()``) and a loss that turned inf/NaN for good."""
        start = proc.nonfinite_from()
        if start is None:
            return None
        ids = {i for e in proc.of("step") for i in e.get("grad") or []}
        params = [p for m in proc.of("model") for p in m.get("params", []) if p.get("id") in ids]
        half = [p for p in params if p.get("dtype") == "torch.float16"]
        if not half:
            return None
        optimizer = proc.first("optimizer") or {}
        eps = next((g.get("eps") for g in optimizer.get("groups", []) if isinstance(g.get("eps"), float)), None)
        steps = [s for s in proc.losses_per_step() if s <= max(proc.steps, 1)]
        message = (
            f"{len(half)} of {len(params)} trained parameters are float16 themselves (not fp16 autocast over "
            f"float32 weights), and the loss is inf/NaN from step {start} to the last step observed ({steps[-1]})."
        )
        if eps is not None and eps <= FP16_TINY:
            message += (f" {optimizer.get('cls', 'The optimizer')}'s eps={eps:g} rounds to 0 in float16 (its "
                        "smallest positive value is 6e-8): where the second-moment estimate underflows to 0, the "
                        "update divides by zero.")
        else:
            message += " float16 weights and optimizer state overflow above 65504 and underflow below 6e-8."
        first = next((e for e in proc.of("backward") if e.get("step", 0) + 1 == start), None)
        return self.finding(
            message, fix=_FIX_HALF_PARAMS, location=user_location(optimizer.get("loc"), ctx) or
            user_location((first or {}).get("loc"), ctx), headline="nonfinite_from_step",
            evidence={"param_dtype": "torch.float16", "half_parameters": len(half), "trained_parameters": len(params),
                      "nonfinite_from_step": start, "steps_observed": steps[-1], "optimizer": optimizer.get("cls"),
                      "eps": eps},
        )

    def _overflow(self, proc: ProcessTrace, ctx: StaticContext) -> Finding | None:
        confirmed = confirmed_overflows(proc)
        if not confirmed:
            return None
        first = confirmed[0]
        peak = first.get("fp32_max_abs")
        low, high = (first.get("input_range") or [None, None])[:2]
        in_text = f"its input ranged over [{_g(low)}, {_g(high)}]" if low is not None else "its input was finite"
        fits = peak is not None and peak < BF16_MAX
        message = (
            f"Under fp16 autocast, module `{first.get('module')}` ({first.get('cls')}) produced inf/NaN at step "
            f"{first.get('step')}: {in_text}, and recomputed in fp32 its output is finite with a largest magnitude "
            f"of {_g(peak)}, beyond fp16's 65504. "
            + ("bfloat16 (range up to 3.4e38) would hold it. " if fits else "")
            + f"{_skips(proc)[0].upper()}{_skips(proc)[1:]}."
        )
        evidence = {
            "module": first.get("module"), "module_class": first.get("cls"), "step": first.get("step"),
            "input_range": first.get("input_range"), "fp32_max_abs": peak, "fp16_max": FP16_MAX,
            "bf16_fits": fits, "overflow_events": len(confirmed), **_skip_stats(proc),
        }
        return self.finding(message, fix=_FIX_OVERFLOW, location=user_location(first.get("loc"), ctx),
                            evidence=evidence, headline="fp32_max_abs")

    def _scaler_misuse(self, proc: ProcessTrace, ctx: StaticContext) -> Iterable[tuple[str, Finding]]:
        scaled = any(e.get("call") == "scale" for e in proc.of("scaler"))
        if not scaled:
            return
        # Iterations: the events between one scaler.scale call and the next.
        clip_hit = step_hit = None
        clip_checked = 0
        iterations = _iterations(proc)
        for events in iterations:
            calls = [(e["ev"], e.get("call")) for e in events]
            if clip_hit is None:
                for index, event in enumerate(events):
                    if event["ev"] != "clip":
                        continue
                    clip_checked += 1
                    before = [c for c in calls[:index] if c == ("scaler", "unscale_")]
                    if not before:
                        clip_hit = event
                    break
            if step_hit is None:
                steps = [e for e in events if e["ev"] == "step"]
                if steps and ("scaler", "step") not in calls:
                    step_hit = steps[0]
        if clip_hit is not None:
            scale = next((e.get("scale") for e in proc.of("scaler") if e.get("scale")), None)
            message = (f"clip_grad_norm_ ran on still-scaled gradients (no scaler.unscale_ before it): the total norm "
                       f"it saw, {_g(clip_hit.get('total_norm'))}, includes the loss scale {_g(scale)}, so "
                       f"max_norm={_g(clip_hit.get('max_norm'))} clips far too hard or at the wrong threshold.")
            yield "clip-before-unscale", self.finding(
                message, fix=_FIX_CLIP, location=user_location(clip_hit.get("loc"), ctx),
                evidence={"total_norm_seen": clip_hit.get("total_norm"), "max_norm": clip_hit.get("max_norm"),
                          "scale": scale}, headline="total_norm_seen")
        if step_hit is not None:
            scale = next((e.get("scale") for e in proc.of("scaler") if e.get("call") == "scale"), None)
            message = (f"optimizer.step() ran after scaler.scale(loss).backward() without scaler.step(): the update "
                       f"used gradients still multiplied by the loss scale ({_g(scale)}), and inf/NaN gradients "
                       "are not skipped.")
            yield "optimizer-step", self.finding(message, fix=_FIX_STEP,
                                                 location=user_location(step_hit.get("loc"), ctx),
                                                 evidence={"scale": scale})
        steps = [e for e in proc.of("scaler") if e.get("call") == "step"]
        updates = [e for e in proc.of("scaler") if e.get("call") == "update"]
        crash = proc.crash or {}
        refused = "since the last update()" in str(crash.get("error", ""))
        if steps and not updates and (len(steps) >= 2 or refused):
            if refused:
                message = ("scaler.update() is never called: the second scaler.step() stopped the script with "
                           f"\"{crash.get('error')}\".")
            else:
                message = (f"scaler.step() ran {len(steps)} times and scaler.update() never: the loss scale stays at "
                           f"{_g(steps[0].get('scale'))} and, once a step overflows, every later step is skipped.")
            yield "no-update", self.finding(message, fix=_FIX_UPDATE, location=user_location(steps[0].get("loc"), ctx),
                                            evidence={"scaler_steps": len(steps), "updates": 0,
                                                      "crash": crash.get("error")})

    def _collapse(self, proc: ProcessTrace, ctx: StaticContext, reported: bool) -> Finding | None:
        steps = [e for e in proc.of("scaler") if e.get("call") == "step"]
        stats = _skip_stats(proc)
        if not scale_collapses(proc) or reported:
            return None
        message = (f"The GradScaler skipped {stats['skipped_steps']} of {stats['scaler_steps']} steps and its scale "
                   f"fell from {_g(stats['first_scale'])} to {_g(stats['final_scale'])} without recovering: "
                   "gradients overflow at every scale, so the model is not training.")
        return self.finding(message, fix=_FIX_COLLAPSE, location=user_location(steps[0].get("loc"), ctx),
                            evidence=stats, headline="skipped_steps")


def confirmed_overflows(proc: ProcessTrace) -> list[Event]:
    """Non-finite outputs under fp16 autocast that the same module's fp32 recomputation holds: fp16's range."""
    return [e for e in proc.of("nonfinite") if e.get("fp16_autocast") and e.get("fp32_finite")]


def scale_collapses(proc: ProcessTrace) -> bool:
    """Whether the GradScaler's scale keeps collapsing (not the few halvings of a fresh scaler)."""
    steps = [e for e in proc.of("scaler") if e.get("call") == "step"]
    stats = _skip_stats(proc)
    # A fresh scaler halves its scale a few times before it settles: only a run of skips that goes on
    # past that (five or more, the last three in a row), or a scale below 1, is a collapse.
    tail = steps[-3:]
    return (len(steps) >= 5 and stats["skipped_steps"] >= 5 and all(e.get("skipped") for e in tail)) \
        or (stats["final_scale"] is not None and stats["final_scale"] < 1.0)


def _contradicted(proc: ProcessTrace) -> set[str]:
    """Static suspicions the run shows to be wrong: the script did that part right when it ran."""
    kinds = set()
    scaler = proc.of("scaler")
    calls = [e.get("call") for e in scaler]
    if "update" in calls:
        kinds.add("no-update")
    if scaler:
        kinds.add("no-scaler")
    iterations = _iterations(proc)
    if any(any(e["ev"] == "clip" for e in it) for it in iterations):
        kinds.add("clip-before-unscale")  # observed: judged at run time
    if any(any(e["ev"] == "step" for e in it) for it in iterations):
        kinds.add("optimizer-step")
    if proc.of("autocast") and not _fp16(proc):
        kinds.add("no-scaler")
    return kinds


def _iterations(proc: ProcessTrace) -> list[list[Event]]:
    """The trace split at every scaler.scale call (one training iteration each, roughly)."""
    chunks: list[list[Event]] = []
    current: list[Event] | None = None
    for event in proc.events:
        if event["ev"] == "scaler" and event.get("call") == "scale":
            current = []
            chunks.append(current)
        if current is not None and event["ev"] in ("scaler", "clip", "step", "backward"):
            current.append(event)
    return chunks


def fp16_backwards(proc: ProcessTrace) -> int:
    """Backward passes of losses computed under fp16 autocast (an fp16 region since the previous backward).

    The probe records fp16 autocast regions of the first backward passes only: enough to tell fp16
    training from fp16 used for evaluation alone.
    """
    count, armed = 0, False
    for event in proc.events:
        if event["ev"] == "autocast" and is_fp16_region(event):
            armed = True
        elif event["ev"] == "backward":
            count += armed
            armed = False
    return count


def _fp16(proc: ProcessTrace) -> bool:
    return any(is_fp16_region(e) for e in proc.of("autocast"))


def _skip_stats(proc: ProcessTrace) -> dict[str, Any]:
    steps = [e for e in proc.of("scaler") if e.get("call") == "step"]
    scales = [e.get("scale") for e in proc.of("scaler") if e.get("scale") is not None]
    return {
        "scaler_steps": len(steps), "skipped_steps": sum(1 for e in steps if e.get("skipped")),
        "first_scale": scales[0] if scales else None, "final_scale": scales[-1] if scales else None,
        "min_scale": min(scales) if scales else None,
    }


def _skips(proc: ProcessTrace) -> str:
    stats = _skip_stats(proc)
    if not stats["scaler_steps"]:
        return "no GradScaler skipped them"
    return f"the GradScaler skipped {stats['skipped_steps']} of {stats['scaler_steps']} steps"


def _g(value: Any) -> str:
    if isinstance(value, (int, float)):
        return f"{value:.4g}"
    return str(value)


# -- static analysis --------------------------------------------------------------------------------


@dataclass
class MisuseSite:
    line: int
    kind: str
    names: dict[str, str]


_STATIC_TEXT = {
    "clip-before-unscale": (_FIX_CLIP, Severity.ERROR,
                            "`{clip}` runs after `{scaler}.scale(...).backward()` with no `{scaler}.unscale_()` "
                            "before it: it clips the scaled gradients."),
    "optimizer-step": (_FIX_STEP, Severity.ERROR,
                       "`{opt}.step()` is called where `{scaler}.scale(...)` produced the gradients and "
                       "`{scaler}.step()` is never called there: the update uses scaled gradients."),
    "no-update": (_FIX_UPDATE, Severity.ERROR,
                  "`{scaler}.step()` is called but `{scaler}.update()` never is: the loss scale never adapts."),
    "no-scaler": (_FIX_NO_SCALER, Severity.WARNING,
                  "fp16 autocast is used and no GradScaler is created anywhere in this script."),
}


def static_misuse(ctx: StaticContext) -> list[MisuseSite]:
    """GradScaler call-order mistakes visible in the source."""
    aliases = import_aliases(ctx.tree)
    scalers = _scaler_names(ctx, aliases)
    sites: list[MisuseSite] = []
    calls = ctx.calls()
    scale_calls = [c for c in calls if _method(c) == "scale" and _receiver(c) in scalers]
    for scale_call in scale_calls:
        scaler = _receiver(scale_call)
        scope = _scope(ctx.tree, scale_call)
        inside = [c for c in calls if _contains(scope, c)]
        later = [c for c in inside if (c.lineno, c.col_offset) > (scale_call.lineno, scale_call.col_offset)]
        unscale_lines = [c.lineno for c in inside if _method(c) == "unscale_" and _receiver(c) == scaler]
        for call in later:
            name = last_segment(resolved_call(call, aliases))
            if name in ("clip_grad_norm_", "clip_grad_norm", "clip_grad_value_"):
                if not any(line <= call.lineno for line in unscale_lines):
                    sites.append(MisuseSite(call.lineno, "clip-before-unscale",
                                            {"clip": name, "scaler": scaler}))
                break
        steps = [c for c in inside if _method(c) == "step" and _receiver(c) == scaler]
        opt_steps = [c for c in later if _method(c) == "step" and _receiver(c) not in scalers
                     and not _is_scheduler(_receiver(c))]
        if not steps and opt_steps:
            sites.append(MisuseSite(opt_steps[0].lineno, "optimizer-step", {"opt": _receiver(opt_steps[0]),
                                                                             "scaler": scaler}))
    for scaler in scalers:
        steps = [c for c in calls if _method(c) == "step" and _receiver(c) == scaler]
        updates = [c for c in calls if _method(c) == "update" and _receiver(c) == scaler]
        if steps and not updates:
            sites.append(MisuseSite(steps[0].lineno, "no-update", {"scaler": scaler}))
    if not scalers:
        fp16 = next((c for c in calls if _is_fp16_autocast(c, aliases)), None)
        if fp16 is not None:
            sites.append(MisuseSite(fp16.lineno, "no-scaler", {}))
    unique = {(s.line, s.kind): s for s in sites}
    return sorted(unique.values(), key=lambda s: s.line)


def _scaler_names(ctx: StaticContext, aliases: dict[str, str]) -> set[str]:
    names = set()
    for node in ast.walk(ctx.tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Call):
            if last_segment(resolved_call(node.value, aliases)) in ("GradScaler", "ShardedGradScaler"):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names.update(n for n in (dotted_name(t) for t in targets) if n)
    return names


def _method(call: ast.Call) -> str | None:
    return call.func.attr if isinstance(call.func, ast.Attribute) else None


def _receiver(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Attribute):
        return dotted_name(call.func.value)
    return None


def _is_scheduler(name: str | None) -> bool:
    lowered = (name or "").lower()
    return any(word in lowered for word in ("sched", "lr_", "warmup", "swa"))


def _scope(tree: ast.AST, node: ast.AST) -> ast.AST:
    """The innermost loop or function that contains ``node`` (the module if none)."""
    best: ast.AST = tree
    for candidate in ast.walk(tree):
        if isinstance(candidate, (ast.For, ast.While, ast.AsyncFor, ast.FunctionDef, ast.AsyncFunctionDef)) \
                and _contains(candidate, node) and _contains(best, candidate):
            best = candidate
    return best


def _contains(outer: ast.AST, inner: ast.AST) -> bool:
    if outer is inner:
        return True
    if isinstance(outer, ast.Module):
        return True
    start, end = getattr(outer, "lineno", 0), getattr(outer, "end_lineno", 0)
    return start <= getattr(inner, "lineno", -1) and getattr(inner, "end_lineno", 1 << 30) <= end \
        and (getattr(inner, "lineno", 0), getattr(inner, "col_offset", 0)) >= (start, getattr(outer, "col_offset", 0))


def _is_fp16_autocast(call: ast.Call, aliases: dict[str, str]) -> bool:
    name = resolved_call(call, aliases) or ""
    if last_segment(name) != "autocast":
        return False
    dtype = keyword(call, "dtype")
    enabled = keyword(call, "enabled")
    if isinstance(enabled, ast.Constant) and enabled.value is False:
        return False
    if dtype is not None:
        return last_segment(dotted_name(dtype)) in ("float16", "half")
    device = call.args[0] if call.args else keyword(call, "device_type")
    # CUDA autocast defaults to fp16; CPU autocast to bf16.
    if "cuda" in name:
        return True
    return isinstance(device, ast.Constant) and device.value == "cuda"
