"""CC023 accumulation-syncs-every-micro-step: DDP all-reduces the gradients of every accumulated micro-batch."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from convcheck.findings import Finding, Severity
from convcheck.registry import Check
from convcheck.runtime.trace import Event, ProcessTrace, RunTrace
from convcheck.static.flow import user_location

_FIX = (
    "Run every micro-batch but the last under `with model.no_sync():` (forward and backward), so that DDP "
    "all-reduces the accumulated gradients once, at the last backward before `optimizer.step()`; accelerate's "
    "`with accelerator.accumulate(model):` does this for you, and Lightning does it with "
    "`accumulate_grad_batches`."
)


class AccumulationSyncsEveryMicroStep(Check):
    """## What it does
    Under `DistributedDataParallel` with gradient accumulation (several backward passes per optimizer
    step), it records for each backward pass whether its DDP forward ran inside `model.no_sync()`, and
    reports accumulation where every micro-batch all-reduced its gradients: the all-reduces wasted per
    optimizer step (backward passes per step − 1), and the size of each.

    ## Why is this bad?
    The result is correct (an all-reduce of partial sums adds up to the same average) but each micro-batch
    pays a full gradient all-reduce across the ranks, where one at the last micro-batch would do: with 4
    micro-batches per step, 3 of every 4 all-reduces are wasted, which on slow interconnects can dominate
    the step time.

    ## Example
    ```python
    for i, (x, y) in enumerate(loader):
        loss = criterion(ddp_model(x), y) / accum_steps
        loss.backward()                       # all-reduces at every micro-batch
        if (i + 1) % accum_steps == 0:
            optimizer.step()
            optimizer.zero_grad()
    ```

    ## Use instead
    ```python
    for i, (x, y) in enumerate(loader):
        last = (i + 1) % accum_steps == 0
        with contextlib.nullcontext() if last else ddp_model.no_sync():
            loss = criterion(ddp_model(x), y) / accum_steps
            loss.backward()                   # all-reduces only at the last micro-batch
        if last:
            optimizer.step()
            optimizer.zero_grad()
    ```

    ## Fix
    Wrap the forward and backward of every micro-batch but the last in `with model.no_sync():`. DDP
    decides at the forward whether the backward will all-reduce, so the forward must be inside it.
    accelerate's `accumulate` and Lightning's `accumulate_grad_batches` already do this; the setting
    `static_graph=True` or `gradient_as_bucket_view=True` does not remove the extra all-reduces.

    ## Known limits
    A performance finding (info): it says nothing about correctness. Only `DistributedDataParallel` is
    followed (FSDP and DeepSpeed accumulate differently and are not reported), only optimizer steps the run
    completed are counted, and a DDP wrapper called inside another module's forward is not seen.
    """

    code = "CC023"
    name = "accumulation-syncs-every-micro-step"
    severity = Severity.INFO
    summary = "Gradient accumulation under DDP without no_sync(): every micro-batch pays an all-reduce."
    needs = frozenset({"ddp_sync"})

    def check_runtime(self, run: RunTrace, ctx: Any) -> Iterable[Finding]:
        proc = next((p for p in run.trainers if p.rank is not None and p.world_size >= 2 and p.of("ddp_sync")),
                    None)
        if proc is None:
            return []
        wasted = _wasted_by_step(proc)
        if not wasted:
            return []
        # The usual shape of a step (a step the GradScaler skipped folds its micro-batches into the next one).
        typical, backwards = Counter(wasted.values()).most_common(1)[0][0]
        first_step = min(wasted)
        first = next(e for e in proc.of("backward") if e.get("step") == first_step - 1)
        nbytes = _synced_bytes(proc)
        steps_done = len([s for s in proc.of("step") if not s.get("closure")])
        if typical == backwards - 1:
            what = (f"all-reduced the gradients at every micro-batch: {backwards} backward passes per optimizer "
                    f"step, none inside `no_sync()`, so {typical} of the {backwards} all-reduces of each step are")
        else:
            what = (f"all-reduced the gradients at {typical + 1} of the {backwards} backward passes of each "
                    f"optimizer step where only the last needs to, so {typical} all-reduce"
                    f"{'s' if typical > 1 else ''} per step {'are' if typical > 1 else 'is'}")
        message = (f"Gradient accumulation under DDP ({proc.world_size} ranks) {what} wasted "
                   f"({len(wasted)} of {steps_done} steps observed).")
        if nbytes:
            message += f" Each all-reduce moves {_size(nbytes)} of gradients per rank."
        if any(e.get("static_graph") for e in proc.of("ddp_sync")):
            message += " static_graph=True does not skip them."
        return [self.finding(
            message, fix=_FIX, location=user_location(first.get("loc"), ctx), headline="wasted_allreduces_per_step",
            evidence={"world_size": proc.world_size, "backwards_per_step": backwards,
                      "wasted_allreduces_per_step": typical, "steps_with_waste": len(wasted),
                      "steps_observed": steps_done, "gradient_bytes": nbytes,
                      "static_graph": any(e.get("static_graph") for e in proc.of("ddp_sync"))},
        )]


def _wasted_by_step(proc: ProcessTrace) -> dict[int, tuple[int, int]]:
    """Optimizer step (1-based) -> (all-reduces beyond the last one, backward passes) for accumulated steps."""
    synced: dict[int, bool] = {e["n"]: bool(e.get("synced")) for e in proc.of("ddp_sync")}
    backwards: dict[int, list[Event]] = {}
    for event in proc.of("backward"):
        backwards.setdefault(int(event.get("step") or 0) + 1, []).append(event)
    found = {}
    for step in proc.of("step"):
        if step.get("closure"):
            continue
        group = backwards.get(int(step.get("n") or 0), [])
        flags = [synced.get(e.get("n")) for e in group]
        if len(flags) < 2 or any(f is None for f in flags):
            continue  # no accumulation, or a backward that did not come from a DDP forward
        extra = sum(1 for f in flags if f) - 1
        if extra > 0:
            found[int(step["n"])] = (extra, len(flags))
    return found


def _synced_bytes(proc: ProcessTrace) -> int:
    """Bytes of the gradients DDP all-reduces: the trainable parameters of the DDP-wrapped model."""
    model = next((m for m in proc.of("model") if m.get("cls") == "DistributedDataParallel"), None)
    total = 0
    for param in (model or {}).get("params", []):
        if param.get("requires_grad", True) and param.get("shape") is not None:
            count = 1
            for dim in param["shape"]:
                count *= int(dim)
            total += count * _ITEM_BYTES.get(str(param.get("dtype")), 4)
    return total


_ITEM_BYTES = {"torch.float16": 2, "torch.bfloat16": 2, "torch.float64": 8}


def _size(nbytes: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes} bytes"
