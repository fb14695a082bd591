"""CC018 ranks-different-data: DDP ranks that built different datasets or splits of the same data."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from convcheck.findings import Finding, Severity
from convcheck.registry import Check
from convcheck.runtime.trace import Event, ProcessTrace, RunTrace
from convcheck.static.context import StaticContext, call_name
from convcheck.static.flow import user_location

_SPLIT_FIX = (
    "Split the data the same way on every rank: pass a generator seeded with the same value on every rank "
    "(`random_split(ds, [80, 20], generator=torch.Generator().manual_seed(0))`), or split once, save the indices, "
    "and load them on every rank. The DistributedSampler then gives each rank its own share of the one training split."
)
_NAMES_FIX = (
    "Build the list of samples the same way on every rank: sort it, or shuffle it with a generator seeded with the "
    "same value on every rank, before splitting it into training and validation; leave the per-rank shuffling to "
    "the DistributedSampler (`shuffle=True`, `set_epoch` every epoch)."
)


class RanksDifferentData(Check):
    """## What it does
    Under DDP, compares each rank's datasets, loader by loader (matched by the line that built the DataLoader), without
    reading a sample: the indices of a `Subset` (what `random_split` returns), the list of file names or samples a
    dataset holds (`samples`, `files`, `paths`...), recursively through `Subset` and `ConcatDataset`. It reports
    ranks whose datasets have the same length but hold different subsets of the data, or the same samples in a
    different order under a `DistributedSampler`.

    ## Why is this bad?
    Every rank runs the script on its own. A `random_split` without a seeded generator, or a file list shuffled
    with an unseeded RNG before it is cut into training and validation parts, splits the data differently on every
    rank: the training split of one rank holds samples that another rank holds out for validation or testing, so
    the reported validation score is inflated by leaked test data, and the "distributed" run trains each rank on a
    different partition. A `DistributedSampler` gives each rank the samples at its share of positions, assuming
    every rank lists the same samples in the same order; when the order differs, ranks train on overlapping
    samples and miss others.

    ## Example
    ```python
    dist.init_process_group("gloo")
    train, test = random_split(dataset, [800, 200])   # a different split on every rank
    loader = DataLoader(train, sampler=DistributedSampler(train))
    ```

    ## Use instead
    ```python
    dist.init_process_group("gloo")
    train, test = random_split(dataset, [800, 200], generator=torch.Generator().manual_seed(0))
    loader = DataLoader(train, sampler=DistributedSampler(train))
    ```

    ## Fix
    Make the split deterministic and the same on every rank (a generator seeded with the same value, or indices
    computed once and loaded); leave per-rank shuffling to the `DistributedSampler`. Different `Subset` indices
    for the same data are an error; different file lists are a warning.

    ## Known limits
    Only what identifies samples without reading them is compared: `Subset` indices, and lists of names or
    `(name, label)` samples in common attributes. Datasets that differ in their tensor contents (synthetic data
    drawn per rank) are not reported, nor datasets of different lengths, nor disjoint per-rank shards (a
    deliberate split of the data between ranks), nor loaders that fed no optimizer step (an evaluation subset
    drawn on each rank leaks nothing into training). A DataLoader built at one line more than once is matched by the
    order in which the loaders were built.
    Lists longer than 262,144 entries are compared from a strided sample of them, which can miss a difference.
    """

    code = "CC018"
    name = "ranks-different-data"
    severity = Severity.ERROR
    summary = "DDP ranks built different splits of the same data (an unseeded random_split, a shuffled file list)."
    needs = frozenset({"datasets"})

    def check_runtime(self, run: RunTrace, ctx: StaticContext) -> Iterable[Finding]:
        trainers = [p for p in run.trainers if p.rank is not None]
        if len(trainers) < 2 or max(p.world_size for p in trainers) < 2:
            return []
        first, findings = trainers[0], []
        digests = {e.get("loader"): e for e in first.of("dataset_digest")}
        training = _training_loaders(first)
        for loader in first.of("loader"):
            ours = digests.get(loader.get("id"))
            if ours is None or (training is not None and loader.get("id") not in training):
                continue
            for other in trainers[1:]:
                theirs = _same_loader_digest(other, loader)
                found = self._compare(first, other, loader, ours, theirs, ctx) if theirs is not None else None
                if found is not None:
                    findings.append(found)
                    break
        return findings

    def _compare(self, first: ProcessTrace, other: ProcessTrace, loader: Event, ours: Event, theirs: Event,
                 ctx: StaticContext) -> Finding | None:
        distributed = "DistributedSampler" in (loader.get("sampler"), loader.get("batch_sampler_inner"))
        parts = {p.get("path"): p for p in theirs.get("parts") or []}
        ranks = [first.rank, other.rank]
        warning = None
        for a in ours.get("parts") or []:
            b = parts.get(a.get("path"))
            if b is None or b.get("kind") != a.get("kind") or a.get("n") != b.get("n") or a.get("digest") == b.get(
                    "digest"):
                continue
            reordered = a.get("set_digest") is not None and a.get("set_digest") == b.get("set_digest")
            if a.get("kind") == "subset_indices":
                if reordered:
                    if distributed and warning is None:
                        warning = self._reordered(a, ranks, loader, ctx, "indices")
                    continue
                shared = len(set(a.get("indices") or []) & set(b.get("indices") or []))
                if shared == 0:
                    continue  # disjoint subsets: a deliberate per-rank shard
                return self._split(a, b, shared, ranks, loader, ctx)
            if a.get("kind") == "names" and warning is None:
                if reordered:
                    if distributed:
                        warning = self._reordered(a, ranks, loader, ctx, "names")
                    continue
                share = _sketch_overlap(a.get("sketch") or [], b.get("sketch") or [])
                if share:
                    warning = self._names(a, b, share, ranks, loader, ctx)
        return warning

    def _split(self, a: dict[str, Any], b: dict[str, Any], shared: int, ranks: list[Any], loader: Event,
               ctx: StaticContext) -> Finding:
        seen = min(len(a.get("indices") or []), len(b.get("indices") or []))
        line = _static_call(ctx, ("random_split",))
        where = (ctx.display_path, line) if line else user_location(loader.get("loc"), ctx)
        message = (
            f"Ranks {ranks[0]} and {ranks[1]} hold different subsets of the same data in this DataLoader's "
            f"dataset (`{a.get('path')}`, {a.get('n')} samples each): they share {shared} of {seen} indices. "
            "The split was drawn separately on each rank (a random_split without a seeded generator draws a "
            "different one on every rank), so each rank trains on samples the others hold out."
        )
        evidence = {"ranks": ranks, "dataset_part": a.get("path"), "samples_per_rank": a.get("n"),
                    "shared_indices": shared, "indices_compared": seen,
                    "first_indices": [(a.get("indices") or [])[:8], (b.get("indices") or [])[:8]],
                    "loader_built_at": _at(loader, ctx)}
        return self.finding(message, fix=_SPLIT_FIX, location=where, evidence=evidence, severity=Severity.ERROR,
                            headline="shared_indices")

    def _names(self, a: dict[str, Any], b: dict[str, Any], share: float, ranks: list[Any], loader: Event,
               ctx: StaticContext) -> Finding:
        line = _static_call(ctx, ("shuffle",))
        where = (ctx.display_path, line) if line else user_location(loader.get("loc"), ctx)
        message = (
            f"Ranks {ranks[0]} and {ranks[1]} built this DataLoader's dataset from different lists of samples "
            f"(`{a.get('path')}`, {a.get('n')} each, about {share:.0%} in common): the list was shuffled or split "
            "differently on each rank, so each rank trains on samples the others hold out."
        )
        evidence = {"ranks": ranks, "dataset_part": a.get("path"), "samples_per_rank": a.get("n"),
                    "estimated_shared_share": round(share, 2), "first_samples": [a.get("head"), b.get("head")],
                    "loader_built_at": _at(loader, ctx)}
        return self.finding(message, fix=_NAMES_FIX, location=where, evidence=evidence, severity=Severity.WARNING,
                            headline="estimated_shared_share")

    def _reordered(self, a: dict[str, Any], ranks: list[Any], loader: Event, ctx: StaticContext,
                   what: str) -> Finding:
        line = _static_call(ctx, ("shuffle",)) if what == "names" else None
        where = (ctx.display_path, line) if line else user_location(loader.get("loc"), ctx)
        message = (
            f"Ranks {ranks[0]} and {ranks[1]} list the same {a.get('n')} samples of this DataLoader's dataset "
            f"(`{a.get('path')}`) in a different order, and a DistributedSampler picks each rank's share by "
            "position: the ranks train on overlapping samples and leave others out."
        )
        evidence = {"ranks": ranks, "dataset_part": a.get("path"), "samples_per_rank": a.get("n"),
                    "same_samples_other_order": True, "loader_built_at": _at(loader, ctx)}
        return self.finding(message, fix=_NAMES_FIX, location=where, evidence=evidence, severity=Severity.WARNING,
                            headline="same_samples_other_order")


def _training_loaders(proc: ProcessTrace) -> set[Any] | None:
    """Ids of the loaders that optimizer steps drew from (an evaluation subset drawn per rank is no leak); None
    when no loader epoch was recorded."""
    epochs = proc.of("loader_epoch")
    if not epochs:
        return None
    trained = set()
    for epoch in epochs:
        start = epoch.get("step_start")
        if start is None or (epoch.get("step") or 0) > start:
            trained.add(epoch.get("loader"))
    return trained


def _same_loader_digest(other: ProcessTrace, loader: Event) -> Event | None:
    """The other rank's digest of the same DataLoader: built at the same line (else the same creation number)."""
    same = [e.get("id") for e in other.of("loader") if e.get("loc") == loader.get("loc")]
    loader_id = same[0] if len(same) == 1 else loader.get("id")
    return next((e for e in other.of("dataset_digest") if e.get("loader") == loader_id), None)


def _sketch_overlap(a: list[str], b: list[str]) -> float:
    """The share of names two lists have in common, estimated from their bottom-k sketches."""
    k = min(len(a), len(b))
    if not k:
        return 0.0
    union = sorted(set(a) | set(b))[:k]
    both = set(a) & set(b)
    return sum(1 for h in union if h in both) / k


def _static_call(ctx: StaticContext | None, names: tuple[str, ...]) -> int | None:
    """The line of the script's first call whose name ends with one of ``names``."""
    if ctx is None:
        return None
    for call in ctx.calls():
        last = (call_name(call) or "").rsplit(".", 1)[-1]
        if last in names:
            return call.lineno
    return None


def _at(loader: Event, ctx: StaticContext) -> str | None:
    where = user_location(loader.get("loc"), ctx)
    return f"{where[0]}:{where[1]}" if where else None
