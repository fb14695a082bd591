"""CC013 ddp-replicas-diverge: parameters that differ across ranks after the same optimizer step."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from typing import Any

from convcheck.findings import Finding, Severity
from convcheck.paths import display_loc
from convcheck.registry import Check
from convcheck.runtime.trace import ProcessTrace, RunTrace
from convcheck.static.context import StaticContext, call_name

#: DDP replicas are bitwise identical; a relative difference above this is no rounding.
_TOLERANCE = 1e-6
#: Wrappers that shard parameters across ranks on purpose: their norms differ by design.
_SHARDED = ("FullyShardedDataParallel", "FSDP", "ZeroRedundancyOptimizer", "DTensor")

_FIX_UNWRAPPED = (
    "Wrap the model in `DistributedDataParallel` (`model = DDP(model)`) before building the optimizer, and "
    "call the wrapper in the training loop: DDP averages the gradients across ranks at every backward."
)
_FIX_MOVED = (
    "Move and cast the model before wrapping it: `model.to(device, dtype)` (or `.half()`, `.cuda(rank)`) first, "
    "then `DDP(model, ...)`; never call `.to()`, `.half()`, `.cpu()`/`.cuda()` on the wrapper or its module after."
)
_FIX_WRAPPED = (
    "Call the DDP wrapper itself (`ddp_model(x)`, not `ddp_model.module(x)`), run the same forward/backward/"
    "step on every rank, and keep rank-dependent code (`if rank == 0:`) to logging and checkpoints."
)


class DdpReplicasDiverge(Check):
    """## What it does
    Compares the parameter norms that every rank records at the same sampled optimizer steps. Under
    `DistributedDataParallel` all replicas start from rank 0's weights and apply the same averaged
    gradient, so they stay bitwise identical; any difference (beyond 1e-6 relative) means the ranks
    train different models. It reports the first step and parameters that differ, with the numbers of
    each rank, and names the cause it can see: the model never wrapped (or wrapped only on a path the
    run did not take), the wrapper bypassed, the wrapped model moved or cast after wrapping (`.half()`,
    `.to(dtype)`, `.cpu()` then `.cuda()`), or a call that ran a different number of times per rank.

    ## Why is this bad?
    Replicas that diverge are no longer data-parallel training: each rank fits its own shard of the data,
    the effective batch is one rank's batch, and the checkpoint rank 0 saves reflects a fraction of the
    data. Typical causes: the model was never wrapped in DDP (gradients are not averaged), the wrapper
    is bypassed (`model.module(x)` skips gradient synchronization), or a rank-dependent branch changes
    the weights or the update on some ranks only.

    ## Example
    ```python
    dist.init_process_group("gloo")
    model = Net()                                # not wrapped
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ```

    ## Use instead
    ```python
    dist.init_process_group("gloo")
    model = DDP(Net())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ```

    ## Fix
    Wrap the model in DDP before building the optimizer, call the wrapper, and run identical updates on
    every rank. Models sharded on purpose (FSDP, tensor parallelism) hold different parameters per rank
    and are not compared when the shapes differ or an FSDP wrapper is seen.

    ## Known limits
    Replicas are compared by parameter norms at sampled steps: a difference that keeps every norm equal (a
    permutation of weights) is not seen. Sharded models (FSDP, tensor parallelism) are not compared.
    """

    code = "CC013"
    name = "ddp-replicas-diverge"
    severity = Severity.ERROR
    summary = "Parameters differ across DDP ranks after the same optimizer step."

    def check_runtime(self, run: RunTrace, ctx: StaticContext) -> Iterable[Finding]:
        ranks = [p for p in run.trainers if p.rank is not None]
        if len(ranks) < 2 or any(_sharded(p) for p in ranks):
            return []
        if len({_shapes(p) for p in ranks}) > 1:
            return []  # different parameters per rank: sharded or pipeline stages, not replicas
        reference = ranks[0]
        ref_norms = _norms_by_step(reference)
        for step in sorted(ref_norms):
            rows = {reference.rank: ref_norms[step]}
            for other in ranks[1:]:
                norms = _norms_by_step(other).get(step)
                if norms is not None and len(norms) == len(ref_norms[step]):
                    rows[other.rank] = norms
            if len(rows) < 2:
                continue
            differing = _differing(rows)
            if differing:
                return [self._finding(run, ranks, step, rows, differing, ctx)]
        return []

    def _finding(self, run: RunTrace, ranks: list[ProcessTrace], step: int, rows: dict[int, list[float]],
                 differing: list[int], ctx: StaticContext) -> Finding:
        reference = ranks[0]
        names = reference.param_names()
        ids = _step_param_ids(reference, step)
        wrapped = all(any(m.get("wrapper") for m in p.of("model")) for p in ranks)
        ddp_in_source = ctx is not None and _builds_ddp(ctx)
        worst = max(differing, key=lambda i: _spread([rows[r][i] for r in rows]))
        name = names.get(ids[worst] if worst < len(ids) else worst, f"parameter {worst}")
        values = ", ".join(f"rank {r}: {rows[r][worst]:.9g}" for r in sorted(rows))
        opt_event = reference.first("optimizer")
        step_event = next((e for e in reference.of("step") if e.get("n") == step), {})
        backward = reference.first("backward") or {}
        moved = next((e for e in reference.of("ddp_module_moved")), None)
        built = reference.first("ddp_init")
        if moved is not None:
            cause = (f"the model was moved or cast after DDP wrapped it (`{moved.get('how')}()` on the "
                     f"{moved.get('cls')} at {display_loc(moved.get('loc'))}): DDP averages the gradients of the "
                     "parameters it was built with, and that call replaced them, so each rank now trains alone")
            fix, location = _FIX_MOVED, moved.get("loc") or step_event.get("loc")
        elif not wrapped and ddp_in_source and built is None:
            cause = ("the script builds a DistributedDataParallel wrapper, but not on the path this run took: "
                     "the model was never wrapped, so gradients are not averaged across ranks")
            fix, location = _FIX_UNWRAPPED, (opt_event or {}).get("loc") or step_event.get("loc")
        elif not wrapped and ddp_in_source:
            cause = ("the model the loop calls is not the DDP wrapper (`model.module(...)` or the unwrapped "
                     "model is called), so gradients are not averaged")
            fix, location = _FIX_WRAPPED, backward.get("loc") or step_event.get("loc")
        elif not wrapped:
            cause = "the model is not wrapped in DistributedDataParallel, so gradients are not averaged across ranks"
            fix, location = _FIX_UNWRAPPED, (opt_event or {}).get("loc") or step_event.get("loc")
        else:
            cause = ("the model is wrapped in DDP, so some rank changes its weights or update on its own "
                     "(rank-dependent code, or a wrapper bypassed for part of the model)")
            fix, location = _FIX_WRAPPED, step_event.get("loc") or backward.get("loc")
            uneven = _uneven_calls(ranks, step)
            if uneven:
                kind, loc, counts = uneven[0]
                shown = ", ".join(f"rank {r}: {n}" for r, n in sorted(counts.items()))
                cause += f"; `{kind}` at {display_loc(loc)} ran a different number of times per rank ({shown})"
                location = loc
        earlier = [n for n in sorted(_norms_by_step(reference)) if n < step]
        message = (
            f"Model replicas differ across {len(rows)} ranks after optimizer step {step}: {len(differing)} of "
            f"{len(rows[reference.rank])} parameters have different norms (`{name}`: {values}); {cause}."
        )
        if earlier:
            message += f" They were identical at step{'s' if len(earlier) > 1 else ''} {', '.join(map(str, earlier))}."
        return self.finding(
            message, fix=fix, location=location, severity=Severity.ERROR, headline="norms_by_rank",
            evidence={"step": step, "ranks": sorted(rows), "parameters_differing": len(differing),
                      "parameters": len(rows[reference.rank]), "example_parameter": name,
                      "norms_by_rank": {str(r): rows[r][worst] for r in sorted(rows)},
                      "identical_before": earlier, "wrapped_in_ddp": wrapped, "ddp_in_source": ddp_in_source,
                      "ddp_built_at_run_time": built is not None,
                      "moved_after_wrapping": (f"{moved.get('how')}() at {display_loc(moved.get('loc'))}"
                                               if moved is not None else None),
                      "tolerance": _TOLERANCE},
        )


#: Calls that change gradients or weights: run on some ranks only, they make replicas diverge.
_UPDATE_CALLS = {"clip": "clip_grad_norm_", "zero_grad": "zero_grad()", "backward": "backward()",
                 "load_state_dict": "load_state_dict()", "scaler": "GradScaler", "sched_step": "scheduler.step()"}


def _uneven_calls(ranks: list[ProcessTrace], step: int) -> list[tuple[str, Any, dict[int, int]]]:
    """Calls at one source line that ran a different number of times per rank up to ``step``."""
    counts: dict[tuple[str, tuple], dict[int, int]] = {}
    for proc in ranks:
        done = 0
        for event in proc.events:
            if event["ev"] == "step":
                done = event.get("n", done)
                if done >= step:
                    break
                continue
            if event["ev"] in _UPDATE_CALLS and event.get("loc") and not event.get("internal"):
                key = (event["ev"], tuple(event["loc"]))
                per_rank = counts.setdefault(key, {})
                per_rank[proc.rank] = per_rank.get(proc.rank, 0) + 1
    found = []
    for (kind, loc), per_rank in counts.items():
        full = {p.rank: per_rank.get(p.rank, 0) for p in ranks}
        if len(set(full.values())) > 1:
            found.append((_UPDATE_CALLS[kind], list(loc), full))
    return found



def _sharded(proc: ProcessTrace) -> bool:
    return any(m.get("cls", "").startswith(_SHARDED) for m in proc.of("model")) or any(
        e.get("cls", "").startswith(_SHARDED) for e in proc.of("optimizer"))


def _shapes(proc: ProcessTrace) -> tuple:
    return tuple(tuple(p.get("shape") or ()) for m in proc.of("model") for p in m.get("params", []))


def _norms_by_step(proc: ProcessTrace) -> dict[int, list[float]]:
    found = {}
    for event in proc.of("step"):
        if event.get("param_norms") is not None and event.get("opt", 0) == 0:
            found[event["n"]] = event["param_norms"]
    return found


def _step_param_ids(proc: ProcessTrace, step: int) -> list[int]:
    opt = proc.first("optimizer")
    if opt is None:
        return []
    return [i for group in opt.get("groups", []) for i in group.get("params", [])]


def _spread(values: list[float]) -> float:
    high = max(abs(v) for v in values)
    return (max(values) - min(values)) / high if high else 0.0


def _differing(rows: dict[int, list[float]]) -> list[int]:
    count = len(next(iter(rows.values())))
    return [i for i in range(count) if _spread([rows[r][i] for r in rows]) > _TOLERANCE]


def _builds_ddp(ctx: StaticContext) -> bool:
    """Does the source construct a DistributedDataParallel wrapper (under any alias)?"""
    names = {"DistributedDataParallel"}
    for node in ast.walk(ctx.tree):
        if isinstance(node, ast.ImportFrom):
            names |= {a.asname for a in node.names if a.name == "DistributedDataParallel" and a.asname}
    return any((call_name(c) or "").rsplit(".", 1)[-1] in names for c in ctx.calls())
