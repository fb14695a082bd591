"""CC005 lr-not-scaled: the global batch grows with the world size while the learning rate stays put."""

from __future__ import annotations

import ast
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from convcheck.findings import Finding, Severity
from convcheck.registry import Check, RunVariant
from convcheck.runtime.trace import ProcessTrace, RunTrace
from convcheck.static.context import StaticContext
from convcheck.static.flow import (
    Flow, argument, is_world_size_source, last_segment, resolved_call, user_location,
)

VARIANT = "world-size-1"

#: Optimizers for which the linear scaling rule holds (Goyal et al., 2017).
SGD_FAMILY = frozenset({"SGD", "ASGD", "LARS", "LARC", "SGDW"})
#: Adaptive optimizers: the square-root rule is the usual advice, and many keep the lr as tuned.
ADAM_FAMILY = frozenset({
    "Adam", "AdamW", "NAdam", "RAdam", "Adamax", "SparseAdam", "Adagrad", "Adadelta", "RMSprop", "Adafactor",
    "LAMB", "Lamb", "FusedAdam", "FusedLAMB", "Lion", "Rprop",
})
_OPTIMIZER_NAMES = SGD_FAMILY | ADAM_FAMILY
_DISTRIBUTED = frozenset({"init_process_group", "DistributedDataParallel", "FullyShardedDataParallel", "spawn"})
_SCHEDULER_HINTS = ("lr_scheduler", "scheduler", "warmup", "warm_up")
_DEFAULT_LR = {"SGD": 1e-3, "Adam": 1e-3, "AdamW": 1e-3, "RMSprop": 1e-2, "Adagrad": 1e-2}


def family(cls: str) -> str:
    """``sgd``, ``adam`` or ``other``."""
    if cls in SGD_FAMILY:
        return "sgd"
    if cls in ADAM_FAMILY:
        return "adam"
    return "other"


def suggested_lr(lr: float, ratio: float, cls: str) -> float:
    """The lr scaled for a global batch ``ratio`` times larger: linear for SGD, square root otherwise."""
    return lr * ratio if family(cls) == "sgd" else lr * math.sqrt(ratio)


def _severity(cls: str) -> Severity:
    return Severity.WARNING if family(cls) == "sgd" else Severity.INFO


def _fix(cls: str) -> str:
    if family(cls) == "sgd":
        return (
            "Scale the learning rate with the global batch (linear scaling rule): `lr = base_lr * world_size * "
            "accum_steps` (world_size from `dist.get_world_size()`), and ramp up to it with a warm-up of a few "
            "epochs, e.g. `LinearLR(opt, start_factor=1 / world_size, total_iters=warmup_steps)`."
        )
    return (
        "For Adam-family optimizers scale by the square root of the batch growth: `lr = base_lr * "
        "math.sqrt(world_size * accum_steps)`, with a short warm-up; or keep the global batch fixed by dividing "
        "the per-process batch by the world size."
    )


def _fmt(value: float | None) -> str:
    return "?" if value is None else f"{value:.6g}"


@dataclass
class _StaticFacts:
    """What the source says about one optimizer's learning rate."""

    line: int
    cls: str
    lr_text: str
    lr_depends: bool
    scaled_elsewhere: bool
    batch_depends: bool
    batch_text: str | None
    distributed: bool


@dataclass
class _RunFacts:
    """The lr, batch and accumulation one run's first optimizer step used."""

    world_size: int
    cls: str
    lrs: list[float]
    loc: Any
    batch: int | None
    accumulation: int
    #: The lr a scheduler started from (``initial_lr``), where one is attached.
    base_lrs: list[float | None] = field(default_factory=list)

    @property
    def base_lr(self) -> float | None:
        base = self.base_lrs[0] if self.base_lrs else None
        return base if base is not None else (self.lrs[0] if self.lrs else None)

    @property
    def global_batch(self) -> int | None:
        return None if self.batch is None else self.batch * self.world_size * self.accumulation


class LrNotScaled(Check):
    """## What it does
    Under DDP the global batch is the per-process batch × the world size × the gradient-accumulation steps.
    This check reports a learning rate that does not change with the world size while the global batch does.

    It proves the invariance rather than assuming it: when the run has several processes per node, a second,
    one-step run with a single process records the learning rate the optimizer actually uses there, and the two
    are compared (schedulers and warm-ups included). For scripts that start their own processes, it follows the
    learning rate through the script's data flow and reports when nothing on its way reads `world_size`,
    `WORLD_SIZE` or `get_world_size()`.

    ## Why is this bad?
    Each step averages the gradient over a global batch that is N times larger, so the gradient noise drops and
    the number of steps per epoch falls by N, but the step size stays the same: training on 8 processes makes
    8× less progress per epoch than on one, and hyperparameters tuned on one machine no longer transfer.

    ## Example
    ```python
    dist.init_process_group("nccl")
    loader = DataLoader(data, batch_size=32, sampler=DistributedSampler(data))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)          # same lr on 1 or 64 GPUs
    ```

    ## Use instead
    ```python
    world_size = dist.get_world_size()
    opt = torch.optim.SGD(model.parameters(), lr=0.1 * world_size)   # linear scaling rule
    warmup = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / world_size, total_iters=500)
    ```

    ## Fix
    For SGD-family optimizers, multiply the base learning rate by world size × accumulation steps and warm up
    to it (Goyal et al., 2017). For Adam-family optimizers the square-root rule (`lr × sqrt(k)`) is the usual
    starting point, but many adaptive-optimizer recipes keep the tuned lr as it is: that rule is a heuristic,
    not a bug, so it is reported (as info) only with `adaptive-optimizers = true` under
    `[tool.convcheck.checks.CC005]`. Keeping the global batch fixed instead (per-process batch divided by the
    world size) is also fine and is not reported. Single-process runs are never reported.
    The comparison run costs one more process start; `compare-run = false` under
    `[tool.convcheck.checks.CC005]` skips it and leaves the proof to the source.

    ## Known limits
    The rules are heuristics: linear scaling for SGD-family optimizers, and (only with `adaptive-optimizers =
    true`) the square-root rule for Adam-family ones. A learning rate already tuned for the global batch by
    hand, or scaled through a config file the run does not read, can still be reported.
    """

    code = "CC005"
    name = "lr-not-scaled"
    severity = Severity.WARNING
    summary = "The global batch grows with the world size (or accumulation) while the learning rate does not."
    needs = frozenset({"graph"})

    _pending: list[Finding]
    _facts: list[_StaticFacts]

    def extra_runs(self, nproc_per_node: int | None, steps: int, ctx: StaticContext) -> dict[str, RunVariant]:
        optimizers = self._static_facts(ctx)
        if optimizers and not any(self._reports(f.cls) for f in optimizers):
            return {}  # only adaptive optimizers in the source, and their advice is off: nothing to compare
        if nproc_per_node is not None and nproc_per_node > 1 and self.options.get("compare-run", True):
            # The lr the optimizer uses with one process, for comparison; one step is enough.
            return {VARIANT: RunVariant(nproc_per_node=1, steps=1)}
        return {}

    # -- static ------------------------------------------------------------------------------

    def check_static(self, ctx: StaticContext) -> Iterable[Finding]:
        self._facts = self._static_facts(ctx)
        found = [self._static_finding(f, ctx) for f in self._facts
                 if self._statically_unscaled(f) and self._reports(f.cls)]
        return self.defer_static(found)

    def _reports(self, cls: str) -> bool:
        """SGD-family always; the square-root advice for adaptive optimizers is a heuristic, given on request."""
        return family(cls) == "sgd" or bool(self.options.get("adaptive-optimizers", False))

    @staticmethod
    def _statically_unscaled(facts: _StaticFacts) -> bool:
        return facts.distributed and not (facts.lr_depends or facts.scaled_elsewhere or facts.batch_depends)

    def _static_facts(self, ctx: StaticContext) -> list[_StaticFacts]:
        flow = Flow(ctx)
        names = [(call, resolved_call(call, flow.aliases) or "") for call in ctx.calls()]
        distributed = any(last_segment(n) in _DISTRIBUTED for _, n in names) or _reads_world_size_env(ctx)
        scaled_elsewhere = False
        batch_depends = False
        batch_text = None
        for call, name in names:
            lowered = name.lower()
            if any(hint in lowered for hint in _SCHEDULER_HINTS) or last_segment(name).endswith("LR"):
                if any(flow.depends_on(arg, is_world_size_source) for arg in [*call.args, *(k.value for k in call.keywords)]):
                    scaled_elsewhere = True
            if last_segment(name) == "DataLoader":
                size = argument(call, 1, "batch_size")
                if size is not None:
                    batch_text = ast.unparse(size)
                    batch_depends = batch_depends or flow.depends_on(size, is_world_size_source)
        for node in ast.walk(ctx.tree):
            # param_group["lr"] = ... * world_size
            if isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if (isinstance(target, ast.Subscript) and isinstance(target.slice, ast.Constant)
                            and target.slice.value in ("lr", "initial_lr", "max_lr")
                            and flow.depends_on(node.value, is_world_size_source)):
                        scaled_elsewhere = True
        facts = []
        for call, name in names:
            cls = last_segment(name)
            if cls not in _OPTIMIZER_NAMES or not (name.startswith("torch.optim") or name == cls):
                continue
            lr = argument(call, 1, "lr")
            lr_text = ast.unparse(lr) if lr is not None else f"default {_DEFAULT_LR.get(cls, 'lr')}"
            facts.append(_StaticFacts(
                line=call.lineno, cls=cls, lr_text=lr_text,
                lr_depends=lr is not None and flow.depends_on(lr, is_world_size_source),
                scaled_elsewhere=scaled_elsewhere, batch_depends=batch_depends, batch_text=batch_text,
                distributed=distributed,
            ))
        return facts

    def _static_finding(self, facts: _StaticFacts, ctx: StaticContext) -> Finding:
        batch = f"per-process batch {facts.batch_text}" if facts.batch_text else "the per-process batch"
        message = (
            f"The learning rate of {facts.cls} (lr={facts.lr_text}) does not depend on the world size: nothing on "
            f"its way reads world_size, WORLD_SIZE or get_world_size(), while the global batch ({batch} × world "
            "size) grows with every process added."
        )
        return self.finding(
            message, fix=_fix(facts.cls), location=(ctx.display_path, facts.line), severity=_severity(facts.cls),
            source="static",
            evidence={"optimizer": facts.cls, "lr_expression": facts.lr_text, "batch_expression": facts.batch_text,
                      "rule": "linear" if family(facts.cls) == "sgd" else "square-root"},
        )

    # -- runtime -----------------------------------------------------------------------------

    def check_runtime(self, run: RunTrace, ctx: StaticContext) -> Iterable[Finding]:
        pending = list(getattr(self, "_pending", []))
        self._pending = []
        facts = getattr(self, "_facts", [])
        main = _run_facts(run)
        if main is None:
            # No optimizer step was recorded: the source is all the evidence there is.
            return pending
        if main.world_size <= 1:
            return []
        where = user_location(main.loc, ctx)
        twin = next((p for p in pending if where and p.location and p.location.line == where[1]), None)
        if twin is None and len(pending) == 1 and len(facts) == 1:
            twin = pending[0]
        static_fact = next((f for f in facts if where and f.line == where[1]), facts[0] if len(facts) == 1 else None)
        variant = run.variants.get(VARIANT)
        single = _run_facts(variant) if variant is not None else None
        if single is None or single.world_size != 1:
            # No comparison run (the script starts its own processes): the data flow is the proof.
            if twin is None:
                return pending
            return [self._with_run(twin, main, ctx)] + [p for p in pending if p is not twin]
        rest = [p for p in pending if p is not twin]
        if not _comparable(main, single):
            # e.g. a warm-up that starts at 0: the first step shows nothing, the source still speaks.
            return pending
        finding = self._compare(main, single, where, static_fact, twin is not None)
        return ([finding] if finding is not None else []) + rest

    def _with_run(self, twin: Finding, main: _RunFacts, ctx: StaticContext) -> Finding:
        lr = main.base_lr
        ratio = main.world_size * main.accumulation
        suggestion = suggested_lr(lr, ratio, main.cls) if lr else None
        message = twin.message + (
            f" This run used {'base ' if main.base_lrs and main.base_lrs[0] is not None else ''}lr {_fmt(lr)} "
            f"with {main.world_size} processes"
            + (f" and a global batch of {main.global_batch}" if main.global_batch else "")
            + f"; {('linear' if family(main.cls) == 'sgd' else 'square-root')} scaling from one process suggests "
            f"{_fmt(suggestion)}."
        )
        evidence = {**twin.evidence, "observed_lr": lr, "world_size": main.world_size,
                    "per_process_batch": main.batch, "accumulation_steps": main.accumulation,
                    "global_batch": main.global_batch, "suggested_lr": suggestion}
        return twin.model_copy(update={"message": message, "evidence": evidence, "source": "static+runtime"})

    def _compare(self, main: _RunFacts, single: _RunFacts, where: Any, static_fact: _StaticFacts | None,
                 has_static: bool) -> Finding | None:
        if not self._reports(main.cls):
            return None
        ratios = [a / b for a, b in zip(main.lrs, single.lrs)]
        if any(abs(r - 1.0) > 1e-6 for r in ratios):
            return None  # the lr depends on the world size (linearly, by square root, or otherwise)
        if static_fact is not None and (static_fact.scaled_elsewhere or static_fact.batch_depends):
            return None  # a warm-up or schedule that reads the world size ramps to a scaled lr later
        g_main, g_single = main.global_batch, single.global_batch
        if g_main is not None and g_single is not None and g_main == g_single:
            return None  # the per-process batch shrinks with the world size: the global batch is fixed
        growth = (g_main / g_single) if g_main and g_single else main.world_size * main.accumulation / single.accumulation
        lr = main.lrs[0]
        base = main.base_lr if main.base_lr is not None else lr
        suggestion = suggested_lr(base, growth, main.cls)
        rule = "linear" if family(main.cls) == "sgd" else "square-root"
        schedule = f" (a scheduler's start; base lr {_fmt(base)})" if abs(base - lr) > 1e-12 * max(1.0, abs(base)) else ""
        batches = (
            f"the global batch was {g_single} with 1 process and {g_main} with {main.world_size}"
            if g_main and g_single else
            f"the global batch grew {growth:g}× (per-process batch × {main.world_size} processes"
            + (f" × {main.accumulation} accumulation steps)" if main.accumulation > 1 else ")")
        )
        message = (
            f"{main.cls} used lr {_fmt(lr)} with 1 process and lr {_fmt(lr)} with {main.world_size} processes{schedule}, "
            f"while {batches}: the learning rate ignores the world size. The {rule} scaling rule suggests "
            f"{'a base ' if schedule else ''}lr {_fmt(suggestion)} at world size {main.world_size}."
        )
        evidence = {
            "optimizer": main.cls,
            "lr_by_world_size": {"1": single.lrs, str(main.world_size): main.lrs},
            "base_lr": base,
            "per_process_batch": {"1": single.batch, str(main.world_size): main.batch},
            "accumulation_steps": {"1": single.accumulation, str(main.world_size): main.accumulation},
            "global_batch": {"1": g_single, str(main.world_size): g_main},
            "rule": rule,
            "suggested_lr": suggestion,
        }
        return self.finding(message, fix=_fix(main.cls), location=where, evidence=evidence,
                            severity=_severity(main.cls), source="static+runtime" if has_static else "runtime")


def _comparable(main: _RunFacts, single: _RunFacts) -> bool:
    """Whether the two runs' first-step lrs can be compared: same groups, none of them 0."""
    if not main.lrs or len(main.lrs) != len(single.lrs):
        return False
    return all(a and b for a, b in zip(main.lrs, single.lrs))


def _reads_world_size_env(ctx: StaticContext) -> bool:
    return any(isinstance(n, ast.Constant) and n.value == "WORLD_SIZE" for n in ast.walk(ctx.tree))


def _run_facts(run: RunTrace | None) -> _RunFacts | None:
    """The first optimizer step of the lowest-rank trainer, with its loader's batch size."""
    if run is None:
        return None
    trainers = run.trainers
    if not trainers:
        return None
    proc = trainers[0]
    step = proc.first("step")
    optimizer = proc.first("optimizer")
    if step is None or optimizer is None:
        return None
    world = max(p.world_size for p in trainers)
    lrs = [float(v) for v in step.get("lrs") or [] if isinstance(v, (int, float))]
    base = [g.get("initial_lr") if isinstance(g.get("initial_lr"), (int, float)) else None
            for g in optimizer.get("groups") or []]
    return _RunFacts(
        world_size=world, cls=str(optimizer.get("cls")), lrs=lrs, loc=optimizer.get("loc") or step.get("loc"),
        batch=_training_batch(proc), accumulation=max(1, int(step.get("backwards") or 1)), base_lrs=base,
    )


def _training_batch(proc: ProcessTrace) -> int | None:
    """The batch size of the DataLoader that fed the training steps, if one did."""
    loaders = {e.get("id"): e for e in proc.of("loader")}
    for epoch in proc.of("loader_epoch"):
        start = epoch.get("step_start")
        if start is None or (epoch.get("step") or 0) > start:
            size = loaders.get(epoch.get("loader"), {}).get("batch_size")
            if isinstance(size, int):
                return size
    sizes = [e.get("batch_size") for e in loaders.values() if isinstance(e.get("batch_size"), int)]
    if len(sizes) == 1:
        return sizes[0]
    return _loss_batch(proc)


def _loss_batch(proc: ProcessTrace) -> int | None:
    """With no DataLoader: the leading dimension of the tensor the first loss was reduced from."""
    for event in proc.of("backward"):
        for node in event.get("graph") or []:
            attrs = node.get("attrs") or {}
            saved = attrs.get("self")
            shape = attrs.get("self_sym_sizes") or (saved.get("shape") if isinstance(saved, dict) else None)
            if isinstance(shape, list) and shape and isinstance(shape[0], int):
                return shape[0]
        if event.get("graph"):
            return None
    return None

