"""CC025 fp16-where-bf16-fits: fp16 autocast with a GradScaler where bfloat16 would need neither."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from typing import Any

from convcheck.checks.cc007_fp16_overflow import confirmed_overflows, fp16_backwards, scale_collapses
from convcheck.findings import Finding, Severity
from convcheck.losscurve import is_fp16_region
from convcheck.registry import Check
from convcheck.runtime.trace import Event, ProcessTrace, RunTrace
from convcheck.static.flow import user_location

#: What the CUDA-to-CPU mapping records when it runs a script's CUDA AMP on the CPU (``cuda_shim``).
_MAPPED_AMP = ("autocast('cuda') -> CPU fp16", "GradScaler('cuda') -> CPU")

_WHY = ("bf16 has fp32's exponent range, so it needs no loss scaling, skips no steps and does not overflow above "
        "fp16's 65504")

_FIX = (
    "Use `torch.autocast(device_type, dtype=torch.bfloat16)` and drop the GradScaler: `loss.backward()` and "
    "`optimizer.step()` in place of `scaler.scale(loss).backward()`, `scaler.step(optimizer)` and "
    "`scaler.update()`. Do it where `torch.cuda.is_bf16_supported()` is true (Ampere or later, compute "
    "capability 8.0+); on older GPUs keep fp16 with the scaler."
)


class Fp16WhereBf16Fits(Check):
    """## What it does
    Finds training under fp16 autocast with a GradScaler where bfloat16 autocast would do: on a GPU that
    supports bf16 natively (compute capability 8.0 or later, recorded from `torch.cuda.is_bf16_supported()`
    when the run has a real GPU). When the run had no GPU (a script's CUDA AMP run on the CPU by convcheck,
    or a script that picks the CPU when no GPU is there) it says what holds on an Ampere-or-later GPU.

    ## Why is this bad?
    It is not a bug: fp16 with a GradScaler trains correctly. But fp16's range ends at 65504, so the scaler
    has to multiply the loss, skip every step whose gradients overflow, and adapt its scale, and activations
    can still overflow in the forward. bfloat16 has fp32's exponent range: on hardware that supports it the
    speed is the same, no scaler is needed, no step is skipped, and one source of inf/NaN is gone.

    ## Example
    ```python
    scaler = torch.amp.GradScaler("cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        loss = criterion(model(x), y)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    ```

    ## Use instead
    ```python
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = criterion(model(x), y)
    loss.backward()
    optimizer.step()
    ```

    ## Fix
    Switch the autocast dtype to `torch.bfloat16` and remove the GradScaler, on GPUs where
    `torch.cuda.is_bf16_supported()` is true. Quiet for bf16 and fp32 training, fp16 without a scaler
    (CC007's), float16 weights (`model.half()`), a real GPU without native bf16, and a script written for
    CPU fp16 autocast alone (CPU autocast defaults to bf16: asking for fp16 there is a choice). When CC007
    reports an fp16 overflow or a collapsing scale on the same run, it already advises bf16 and this check
    stays quiet.

    ## Known limits
    An info finding: bf16 keeps fewer mantissa bits than fp16 (8 against 11), which a few models notice.
    Without a GPU the run cannot tell which GPU the script will train on. Only the first training process's
    device is read.
    """

    code = "CC025"
    name = "fp16-where-bf16-fits"
    severity = Severity.INFO
    summary = "fp16 autocast with a GradScaler where bf16 fits (Ampere or later): bf16 needs no loss scaling."
    needs = frozenset({"amp_device"})

    def check_runtime(self, run: RunTrace, ctx: Any) -> Iterable[Finding]:
        proc = next(iter(run.trainers), None)
        if proc is None or not _fp16_with_scaler(proc) or _half_weights(proc):
            return []
        if confirmed_overflows(proc) or scale_collapses(proc):
            return []  # CC007 reports it, and its fix already names bf16
        autocast = _training_region(proc)
        if autocast is None:
            return []
        device = str(autocast.get("device"))
        stats = _scaler_stats(proc)
        evidence: dict[str, Any] = {"autocast_device": device, "autocast_dtype": autocast.get("dtype"), **stats}
        skipped = f"the scaler skipped {stats['skipped_steps']} of {stats['scaler_steps']} steps here"
        if device == "cuda":
            gpu = proc.first("amp_device") or {}
            if not gpu.get("cuda") or not gpu.get("bf16_supported"):
                return []
            capability = ".".join(str(c) for c in gpu.get("capability") or []) or "?"
            message = (f"fp16 autocast with a GradScaler on {gpu.get('device_name')} (compute capability "
                       f"{capability}), which supports bfloat16: {_WHY} ({skipped}).")
            evidence.update(gpu=gpu.get("device_name"), capability=gpu.get("capability"), bf16_supported=True,
                            ran_on="cuda")
        elif device == "cpu":
            mapped = _mapped(proc)
            if mapped:
                ran = ("This machine has no GPU, so convcheck ran the script's CUDA fp16 autocast and GradScaler "
                       "as CPU fp16 autocast")
            elif ctx is not None and _mentions_cuda(ctx.tree):
                ran = ("This run used CPU fp16 autocast with a GradScaler (no GPU here; the script also targets "
                       "CUDA)")
            else:
                return []  # CPU autocast defaults to bf16: a CPU-only script that asks for fp16 chose it
            message = (f"{ran}. On an Ampere-or-later GPU (compute capability 8.0 or more: A100, H100, RTX 30xx/"
                       f"40xx) bf16 autocast would need no GradScaler: {_WHY} ({skipped}). On older GPUs (V100, "
                       "T4) fp16 with a scaler is the right choice.")
            evidence.update(ran_on="cpu", cuda_mapped_to_cpu=bool(mapped))
        else:
            return []
        return [self.finding(message, fix=_FIX, location=user_location(autocast.get("loc"), ctx),
                             evidence=evidence, headline="skipped_steps")]


def _fp16_with_scaler(proc: ProcessTrace) -> bool:
    """Training losses computed under fp16 autocast, scaled and stepped by an enabled GradScaler."""
    scaled = any(e.get("call") == "scale" for e in proc.of("scaler"))
    stepped = any(e.get("call") == "step" for e in proc.of("scaler"))
    return scaled and stepped and fp16_backwards(proc) > 0


def _training_region(proc: ProcessTrace) -> Event | None:
    """The fp16 autocast region the first fp16 loss was computed in (not an evaluation pass before it)."""
    region = None
    for event in proc.events:
        if event["ev"] == "autocast" and is_fp16_region(event):
            region = event
        elif event["ev"] == "backward":
            if region is not None:
                return region
            region = None
    return None


def _half_weights(proc: ProcessTrace) -> bool:
    """Trainable parameters that are float16 themselves: fp16 chosen for the weights, not only for autocast."""
    return any(p.get("dtype") == "torch.float16" and p.get("requires_grad", True)
               for m in proc.of("model") for p in m.get("params", []))


def _mapped(proc: ProcessTrace) -> list[Event]:
    return [e for e in proc.of("device_map") if e.get("what") in _MAPPED_AMP and not e.get("library")]


def _scaler_stats(proc: ProcessTrace) -> dict[str, Any]:
    steps = [e for e in proc.of("scaler") if e.get("call") == "step"]
    return {"scaler_steps": len(steps), "skipped_steps": sum(1 for e in steps if e.get("skipped"))}


def _mentions_cuda(tree: ast.AST) -> bool:
    """Whether the source uses CUDA anywhere (``torch.cuda``, ``.cuda()``, a ``"cuda"`` device string)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "cuda":
            return True
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("cuda"):
            return True
    return False
