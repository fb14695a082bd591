"""CC021 save-on-every-rank: every DDP rank writes the same checkpoint file."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from convcheck.findings import Finding, Severity
from convcheck.paths import display_loc, display_path
from convcheck.registry import Check
from convcheck.runtime.trace import Event, ProcessTrace, RunTrace
from convcheck.static.flow import user_location

_FIX = (
    "Save from one rank only: `if dist.get_rank() == 0: torch.save(model.module.state_dict(), path)`, and call "
    "`dist.barrier()` after it before any rank loads the file. When every rank holds a different shard, give "
    "each rank its own file (`f\"ckpt_rank{rank}.pt\"`) or use `torch.distributed.checkpoint.save`."
)


class SaveOnEveryRank(Check):
    """## What it does
    Follows every `torch.save` of every rank of a DDP run (to a path, or to a file object opened on one)
    and reports a checkpoint file that two or more ranks of the same job wrote: the same resolved path
    saved by ranks 0 and 1, with the line that saved it and how often each rank wrote it.

    ## Why is this bad?
    The ranks write the same file at the same moment: the writes interleave and the file can end up torn
    (a zip archive whose records come from different writers), which `torch.load` later rejects or, worse,
    reads partly. A rank that loads the checkpoint while another still writes it reads a partial file. It
    also costs N times the disk traffic for one checkpoint, since DDP replicas hold the same weights.

    ## Example
    ```python
    for epoch in range(epochs):
        train_one_epoch(ddp_model, loader)
        torch.save(ddp_model.module.state_dict(), "checkpoint.pt")  # every rank writes it
    ```

    ## Use instead
    ```python
    for epoch in range(epochs):
        train_one_epoch(ddp_model, loader)
        if dist.get_rank() == 0:
            torch.save(ddp_model.module.state_dict(), "checkpoint.pt")
        dist.barrier()  # the others wait until the file is complete
    ```

    ## Fix
    Guard the save with `if dist.get_rank() == 0:` and put a `dist.barrier()` after it, before any rank
    reads the file. Per-rank files (`ckpt_rank{rank}.pt`), `torch.distributed.checkpoint` (collective by
    design: every rank writes its own files) and the rank-guarded savers of accelerate, Lightning and the
    HF Trainer are not reported.

    ## Known limits
    Seen at run time only, from `torch.save` calls: files written by other writers (`safetensors`,
    `np.save`, `open().write`) are not compared, and a save on a path the run did not take is not seen.
    Saves made inside a library (not from the script's own code) are left out. Ranks of one run share a
    machine here: two nodes that each save to their own local disk with `if local_rank == 0:` are correct
    and would not be reported either.
    """

    code = "CC021"
    name = "save-on-every-rank"
    severity = Severity.WARNING
    summary = "Every DDP rank writes the same checkpoint file (torch.save not guarded by rank 0)."

    def check_runtime(self, run: RunTrace, ctx: Any) -> Iterable[Finding]:
        ranks = _ranked(run)
        if len(ranks) < 2:
            return []
        # resolved path -> rank -> the rank's saves there
        by_path: dict[str, dict[int, list[Event]]] = {}
        for rank, procs in ranks.items():
            for proc in procs:
                for event in proc.of("save"):
                    key = _key(event)
                    if key is not None and not event.get("internal"):
                        by_path.setdefault(key, {}).setdefault(rank, []).append(event)
        findings = []
        for key, per_rank in by_path.items():
            if len(per_rank) < 2:
                continue
            findings.append(self._finding(key, per_rank, world_size=max(p.world_size for ps in ranks.values()
                                                                         for p in ps), ctx=ctx))
        return findings

    def _finding(self, key: str, per_rank: dict[int, list[Event]], world_size: int, ctx: Any) -> Finding:
        first_rank = min(per_rank)
        first = per_rank[first_rank][0]
        path = first.get("path") or key
        shown = display_path(path)
        counts = {str(r): len(per_rank[r]) for r in sorted(per_rank)}
        writers = sorted(per_rank)
        if len(writers) == world_size:
            who = "Both ranks" if world_size == 2 else f"All {world_size} ranks"
        else:
            who = "Ranks " + ", ".join(map(str, writers[:-1])) + f" and {writers[-1]} of {world_size}"
        times = sorted(set(counts.values()))
        often = f"{times[0]} time{'s' if times[0] != 1 else ''} each" if len(times) == 1 else \
            "; ".join(f"rank {r}: {n}" for r, n in counts.items())
        where = display_loc(first.get("loc"))
        message = (
            f"{who} wrote the same checkpoint `{shown}` "
            f"(torch.save at {where}, {often}): the ranks write one file at the same time, so it can end up "
            "torn, and a rank that reads it while another writes it gets a partial file."
        )
        return self.finding(
            message, fix=_FIX, location=user_location(first.get("loc"), ctx), headline="saves_by_rank",
            severity=Severity.WARNING,
            evidence={"path": path, "ranks": writers, "world_size": world_size, "saves_by_rank": counts,
                      "steps": sorted({int(e.get("step") or 0) for events in per_rank.values() for e in events})},
        )


def _ranked(run: RunTrace) -> dict[int, list[ProcessTrace]]:
    """The processes of a multi-process job by rank (a rank's DataLoader workers share its rank)."""
    found: dict[int, list[ProcessTrace]] = {}
    for proc in run.processes:
        if proc.rank is None or proc.world_size < 2:
            continue
        found.setdefault(proc.rank, []).append(proc)
    return found


def _key(event: Event) -> str | None:
    """The file a save wrote, resolved: the run's copy of the user's path is shared by every rank."""
    target = event.get("redirected_to") or event.get("path")
    if not isinstance(target, str) or not target:
        return None
    return os.path.normpath(target)

