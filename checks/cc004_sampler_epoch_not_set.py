"""CC004 sampler-epoch-not-set: a DistributedSampler that repeats its order every epoch; ranks that share data."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from typing import Any

from convcheck.findings import Finding, Severity
from convcheck.paths import display_loc
from convcheck.registry import Check
from convcheck.runtime.trace import Event, ProcessTrace, RunTrace
from convcheck.static.context import StaticContext
from convcheck.static.flow import import_aliases, is_false, keyword, mentions_attribute_call, resolved_call, user_location

_FIX = (
    "Call `sampler.set_epoch(epoch)` at the start of every epoch, before iterating the DataLoader "
    "(through `loader.sampler.set_epoch(epoch)` or `loader.batch_sampler.sampler.set_epoch(epoch)` if only the "
    "loader is at hand)."
)
_OVERLAP_FIX = (
    "Give the DataLoader a `DistributedSampler(dataset)` (with `shuffle=` on the sampler, not the loader) so that "
    "each rank draws its own share of every epoch, and call `sampler.set_epoch(epoch)` every epoch."
)
_NOT_SHARDING = ("_InfiniteConstantSampler",)


class SamplerEpochNotSet(Check):
    """## What it does
    Finds a `DistributedSampler` that is iterated for a new epoch while its epoch number has not changed
    (`set_epoch` never called, or called with the same value), and DataLoaders whose ranks draw the same
    samples in one epoch (no `DistributedSampler` under DDP).

    At run time it records every epoch each sampler draws (its epoch number and a digest of the indices) and
    the indices each rank's DataLoader yields; from the source it finds a `DistributedSampler` built in the
    script with no `set_epoch` call anywhere. The finding points at the loop that goes round the epochs, where
    the fix goes, when the source shows it; its evidence names the line that built the sampler.

    ## Why is this bad?
    `DistributedSampler` shuffles with a generator seeded by `seed + epoch`. If the epoch never changes,
    every epoch visits the samples in exactly the same order and every rank sees the same shard of the data
    every epoch: the run loses the benefit of shuffling and generalises worse. Without any distributed
    sampler, every rank trains on the same samples, so N processes do the work of one.

    ## Example
    ```python
    sampler = DistributedSampler(dataset, shuffle=True)
    loader = DataLoader(dataset, batch_size=32, sampler=sampler)
    for epoch in range(epochs):
        for x, y in loader:  # same order every epoch
            ...
    ```

    ## Use instead
    ```python
    sampler = DistributedSampler(dataset, shuffle=True)
    loader = DataLoader(dataset, batch_size=32, sampler=sampler)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for x, y in loader:
            ...
    ```

    ## Fix
    Call `set_epoch(epoch)` on the sampler at the top of every epoch (`loader.sampler.set_epoch(epoch)` works
    too). A sampler built with `shuffle=False` is not reported: its order does not depend on the epoch. For
    ranks that share data, pass `sampler=DistributedSampler(dataset)` to the DataLoader.

    ## Known limits
    Only torch's `DistributedSampler` (and subclasses) is watched: a hand-written distributed sampler or an
    `IterableDataset` that shards by rank is not. A repeated order is only seen when the run reaches a second
    epoch: a training loop's long epochs are shortened for that without being asked, but a loader pulled
    with `next()`, by a framework's loop, or by a loop with no epoch loop around it is not, and needs
    `--max-batches-per-epoch`.
    """

    code = "CC004"
    name = "sampler-epoch-not-set"
    severity = Severity.ERROR
    summary = "A DistributedSampler iterated for a new epoch without set_epoch; ranks that see the same samples."

    _pending: list[Finding]

    # -- static ------------------------------------------------------------------------------

    def check_static(self, ctx: StaticContext) -> Iterable[Finding]:
        found = list(self._static(ctx))
        return self.defer_static(found)

    def _static(self, ctx: StaticContext) -> Iterable[Finding]:
        if mentions_attribute_call(ctx, "set_epoch"):
            return
        aliases = import_aliases(ctx.tree)
        for call in ctx.calls():
            name = resolved_call(call, aliases) or ""
            if name.rsplit(".", 1)[-1] != "DistributedSampler":
                continue
            if is_false(keyword(call, "shuffle")):
                continue
            loop = epoch_loop(ctx, call.lineno)
            built = f"{ctx.display_path}:{call.lineno}"
            message = (
                f"This epoch loop never calls `set_epoch` on the DistributedSampler built at "
                f"{display_loc((ctx.display_path, call.lineno))}: every epoch "
                "will draw the same order." if loop is not None else
                "DistributedSampler is built here but `set_epoch` is never called in this script: "
                "every epoch will draw the same order."
            )
            yield self.finding(
                message, fix=_FIX, location=(ctx.display_path, loop or call.lineno), severity=Severity.WARNING,
                source="static", evidence={"set_epoch_calls": 0, "sampler_built_at": built},
            )

    # -- runtime -----------------------------------------------------------------------------

    def check_runtime(self, run: RunTrace, ctx: StaticContext) -> Iterable[Finding]:
        pending = list(getattr(self, "_pending", []))
        self._pending = []
        findings = list(self._repeated_epochs(run, ctx))
        merged = []
        for finding in findings:
            twin = next((p for p in pending if p.evidence.get("sampler_built_at") == finding.evidence.get(
                "sampler_built_at")), None)
            if twin is not None:
                pending.remove(twin)
                finding = finding.model_copy(update={"source": "static+runtime"})
            merged.append(finding)
        # The run can also clear the source's suspicion: the epoch changed (set elsewhere, e.g. in a library),
        # or the sampler does not shuffle after all.
        cleared = _cleared_locations(run, ctx)
        cleared_at = {f"{path}:{line}" for path, line in filter(None, cleared)}
        pending = [p for p in pending if p.evidence.get("sampler_built_at") not in cleared_at]
        return [*merged, *pending, *self._overlapping_ranks(run, ctx)]

    def _repeated_epochs(self, run: RunTrace, ctx: StaticContext) -> Iterable[Finding]:
        reported: set[Any] = set()
        for proc in run.trainers or run.processes:
            samplers = {e.get("id"): e for e in proc.of("sampler")}
            training = _training_samplers(proc)
            groups: dict[Any, list[Event]] = {}
            for event in proc.of("sampler_iter"):
                sampler = samplers.get(event.get("id"))
                if sampler is None or not sampler.get("shuffle"):
                    continue
                if training is not None and event.get("id") not in training:
                    continue
                # A sampler built anew every epoch at the same line repeats its order just the same.
                key = tuple(sampler["loc"]) if sampler.get("loc") else ("id", event.get("id"))
                groups.setdefault(key, []).append(event)
            for key, iters in groups.items():
                if key in reported:
                    continue
                # An iteration no optimizer step followed before the next began (`next(iter(loader))` to peek
                # at a batch) was abandoned: it is not an epoch.
                iters = [a for a, b in zip(iters, [*iters[1:], None]) if b is None or b.get("step") != a.get("step")]
                repeat = next(
                    ((a, b) for a, b in zip(iters, iters[1:])
                     if a.get("epoch") == b.get("epoch") and a.get("digest") == b.get("digest")),
                    None,
                )
                if repeat is None:
                    continue
                reported.add(key)
                yield self._repeat_finding(proc, samplers[repeat[0].get("id")], iters, ctx)

    def _repeat_finding(self, proc: ProcessTrace, sampler: Event, iters: list[Event], ctx: StaticContext) -> Finding:
        ids = {e.get("id") for e in iters}
        set_calls = [e for e in proc.of("set_epoch") if e.get("id") in ids]
        epoch = iters[0].get("epoch")
        same_value = [e for e in iters if e.get("epoch") == epoch and e.get("digest") == iters[0].get("digest")]
        where = user_location(sampler.get("loc"), ctx)
        built = f"{where[0]}:{where[1]}" if where else "an unknown line"
        if set_calls:
            values = sorted({c.get("epoch") for c in set_calls}, key=str)
            why = f"set_epoch was called, but always with {', '.join(map(str, values))}"
        else:
            why = "set_epoch was never called"
        rank = proc.rank if proc.rank is not None else 0
        message = (
            f"{sampler.get('cls', 'DistributedSampler')} built at {display_loc(where) if where else built} drew "
            f"{len(same_value)} epochs in the same "
            f"order on rank {rank}: its epoch stayed {epoch} ({why}), and the index digest was "
            f"{iters[0].get('digest')} every time."
        )
        evidence = {
            "rank": rank,
            "sampler_built_at": built,
            "epochs_observed": len(iters),
            "sampler_epoch_each_time": [e.get("epoch") for e in iters],
            "index_digests": [e.get("digest") for e in iters],
            "samples_per_epoch": iters[0].get("n"),
            "set_epoch_calls": [
                {"epoch": c.get("epoch"), "at": ":".join(map(str, user_location(c.get("loc"), ctx) or ()))}
                for c in set_calls[:5]
            ],
        }
        # The fix goes at the top of the epoch loop: point there when the source shows which loop it is.
        loop = epoch_loop(ctx, where[1]) if where and where[0] == ctx.display_path and where[1] else None
        if loop is not None:
            evidence["epoch_loop_at"] = f"{ctx.display_path}:{loop}"
            where = (ctx.display_path, loop)
        return self.finding(message, fix=_FIX, location=where, evidence=evidence, severity=Severity.ERROR)

    def _overlapping_ranks(self, run: RunTrace, ctx: StaticContext) -> Iterable[Finding]:
        trainers = [p for p in run.trainers if p.rank is not None]
        if len(trainers) < 2 or max(p.world_size for p in trainers) < 2:
            return
        first = trainers[0]
        loaders = {e.get("id"): e for e in first.of("loader")}
        for loader_id, loader in loaders.items():
            if loader.get("sampler") in _NOT_SHARDING:
                continue
            mine = {e.get("epoch"): e for e in first.of("loader_epoch") if e.get("loader") == loader_id}
            for epoch, ours in sorted(mine.items(), key=lambda kv: kv[0] or 0):
                if not _trained(ours):
                    continue
                result = self._compare(first, ours, loader, trainers[1:], ctx)
                if result is not None:
                    yield result
                    break

    def _compare(self, first: ProcessTrace, ours: Event, loader: Event, others: list[ProcessTrace],
                 ctx: StaticContext) -> Finding | None:
        a = ours.get("indices") or []
        if len(set(a)) < 2:
            return None
        distributed = "DistributedSampler" in (loader.get("sampler"), loader.get("batch_sampler_inner"))
        where = user_location(loader.get("loc"), ctx)
        for other in others:
            # The same DataLoader on the other rank: built at the same line (ids can differ between ranks).
            same = [e.get("id") for e in other.of("loader") if e.get("loc") == loader.get("loc")]
            loader_id = same[0] if len(same) == 1 else ours.get("loader")
            theirs = next((e for e in other.of("loader_epoch")
                           if e.get("loader") == loader_id and e.get("epoch") == ours.get("epoch")), None)
            if theirs is None:
                continue
            b = theirs.get("indices") or []
            if not b:
                continue
            shared = len(set(a) & set(b))
            evidence = {
                "ranks": [first.rank, other.rank],
                "loader_epoch": ours.get("epoch"),
                "indices_per_rank": [len(a), len(b)],
                "shared_indices": shared,
                "sampler": loader.get("sampler"),
                "dataset_len": loader.get("dataset_len"),
                "first_indices": [a[:8], b[:8]],
            }
            same_data = ours.get("first_batch") and ours.get("first_batch") == theirs.get("first_batch")
            if a == b and ours.get("digest") == theirs.get("digest") and same_data:
                message = (
                    f"Ranks {first.rank} and {other.rank} drew the same {len(a)} samples in the same order in epoch "
                    f"{ours.get('epoch')} of this DataLoader (sampler {loader.get('sampler')}, first batch identical): "
                    "every rank trains on the same data."
                )
                return self.finding(message, fix=_OVERLAP_FIX, location=where, evidence=evidence,
                                    severity=Severity.ERROR)
            if distributed or a == b:
                continue
            share = shared / max(1, min(len(set(a)), len(set(b))))
            if shared >= 2 and share >= 0.1:
                message = (
                    f"Ranks {first.rank} and {other.rank} shared {shared} of their {min(len(a), len(b))} sample "
                    f"indices in epoch {ours.get('epoch')} of this DataLoader (sampler {loader.get('sampler')}, "
                    "no DistributedSampler): the ranks' data overlaps instead of being split between them."
                )
                return self.finding(message, fix=_OVERLAP_FIX, location=where, evidence=evidence,
                                    severity=Severity.WARNING)
        return None


def epoch_loop(ctx: StaticContext, sampler_line: int) -> int | None:
    """The line of the loop that goes round the epochs of the sampler built at ``sampler_line``, if the source shows it.

    That is the outermost loop whose body uses the sampler or a loader built from it (``for epoch ...:`` around
    ``for batch in loader:`` or ``train(loader)``); None when no such loop is in sight (e.g. inside a class).
    """
    names: set[str] = set()
    for node in ast.walk(ctx.tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None and any(
            getattr(n, "lineno", None) == sampler_line for n in ast.walk(node.value) if isinstance(n, ast.Call)
        ):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {ast.unparse(t) for t in targets}
    if not names:
        return None
    for _ in range(3):  # sampler -> batch sampler -> loader
        for node in ast.walk(ctx.tree):
            if isinstance(node, ast.Assign) and _mentions(node.value, names):
                names |= {ast.unparse(t) for t in node.targets}
    loops = [node for node in ast.walk(ctx.tree) if isinstance(node, (ast.For, ast.AsyncFor, ast.While))
             and any(_mentions(stmt, names) for stmt in node.body)]
    inner = {id(n) for loop in loops for stmt in loop.body for n in ast.walk(stmt)}
    outermost = sorted(loop.lineno for loop in loops if id(loop) not in inner)
    return outermost[0] if outermost else None


def _mentions(node: ast.AST, names: set[str]) -> bool:
    return any(isinstance(n, (ast.Name, ast.Attribute)) and ast.unparse(n) in names for n in ast.walk(node))


def _cleared_locations(run: RunTrace, ctx: StaticContext) -> set[Any]:
    """Where samplers were built that the run saw shuffle with a changing epoch, or not shuffle at all."""
    cleared = set()
    for proc in run.trainers or run.processes:
        samplers = {e.get("id"): e for e in proc.of("sampler")}
        epochs: dict[Any, set[Any]] = {}
        for event in proc.of("sampler_iter"):
            epochs.setdefault(event.get("id"), set()).add(event.get("epoch"))
        for sampler_id, sampler in samplers.items():
            if not sampler.get("shuffle") or len(epochs.get(sampler_id, ())) > 1:
                cleared.add(user_location(sampler.get("loc"), ctx))
    return cleared


def _trained(epoch: Event) -> bool:
    """Whether optimizer steps ran during this loader epoch (a training loader, not an evaluation one)."""
    start = epoch.get("step_start")
    if start is None:
        return True
    return (epoch.get("step") or 0) > start


def _training_samplers(proc: ProcessTrace) -> set[Any] | None:
    """Ids of samplers whose DataLoader trained (or that no recorded DataLoader uses); None if unknown."""
    loaders = proc.of("loader")
    if not loaders:
        return None
    epochs = proc.of("loader_epoch")
    used: dict[Any, list[Any]] = {}
    for loader in loaders:
        used.setdefault(loader.get("sampler_id"), []).append(loader.get("id"))
    samplers = {e.get("id") for e in proc.of("sampler")}
    training = set()
    for sampler_id in samplers:
        loader_ids = used.get(sampler_id)
        if not loader_ids:
            training.add(sampler_id)
            continue
        mine = [e for e in epochs if e.get("loader") in loader_ids]
        if not mine or any(_trained(e) for e in mine):
            training.add(sampler_id)
    return training

