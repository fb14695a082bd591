"""CC017 training-data-not-shuffled: a training DataLoader that draws data stored in class blocks in stored order."""

from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Iterable
from typing import Any

from convcheck.findings import Finding, Severity
from convcheck.registry import Check
from convcheck.runtime.trace import Event, ProcessTrace, RunTrace
from convcheck.static.context import StaticContext, call_name
from convcheck.static.flow import user_location

_FIX = (
    "Shuffle the training data on every device: pass `shuffle=True` to the training DataLoader itself (not only in "
    "the keyword arguments used with CUDA), or give it a `RandomSampler` (under DDP a "
    "`DistributedSampler(dataset, shuffle=True)` with `set_epoch` every epoch). Evaluation loaders need no shuffling."
)
#: Batches needed before the order is judged with confidence.
_MIN_BATCHES = 3
#: A shuffled order of the drawn labels would change label this many times at least before a deficit is judged.
_MIN_EXPECTED_CHANGES = 16
#: Observed label changes at or below this share of the shuffled expectation: the labels come in blocks.
_BLOCK_RATIO = 0.25


class TrainingDataNotShuffled(Check):
    """## What it does
    Finds a training DataLoader that draws its samples in stored order (`shuffle=False` and no sampler, i.e. a
    `SequentialSampler`, or a `DistributedSampler(shuffle=False)`) over data stored in blocks of one class. It
    judges from the labels actually drawn: on an epoch's first batches it records each batch's class labels (the
    1-D integer tensor of the batch) and compares how often the label changes from sample to sample with how often
    it would change if the same labels came in random order.

    ## Why is this bad?
    Data sets are often stored sorted by class (one folder per class, one file per class, generated class by
    class). Drawn in that order, every batch holds one class: the model chases each class in turn, the gradient of
    a batch says nothing about the others, and training oscillates or settles on the last class seen. Several
    public training scripts pass `shuffle=True` only among the keyword arguments they use with CUDA, so on a CPU
    the training data is never shuffled.

    ## Example
    ```python
    train_kwargs = {"batch_size": 64}
    if use_cuda:
        train_kwargs.update({"shuffle": True, "pin_memory": True})
    loader = DataLoader(sorted_by_class, **train_kwargs)  # on a CPU: stored order
    ```

    ## Use instead
    ```python
    train_kwargs = {"batch_size": 64, "shuffle": True}
    if use_cuda:
        train_kwargs.update({"pin_memory": True})
    loader = DataLoader(sorted_by_class, **train_kwargs)
    ```

    ## Fix
    Pass `shuffle=True` to the training DataLoader on every device, or a `RandomSampler` (a shuffling
    `DistributedSampler` under DDP). Evaluation and test loaders are not reported: their order does not matter.

    ## Known limits
    Only loaders that fed optimizer steps are judged, from their first 8 batches of an epoch; the labels are the
    batch's 1-D integer tensor as long as the batch (a dict's `label`/`target` entry first), so float targets,
    token sequences and labels computed after the loader are not seen. The class shares come from the dataset
    where it stores its labels whole (a `TensorDataset`'s tensor, a `targets`/`labels` attribute); otherwise, when
    every drawn batch holds the same single class, the order cannot be told from a very imbalanced data set: that
    is reported as info. Data whose classes change slowly by nature (consecutive windows of a time series) reads
    as blocks too. A custom sampler or batch sampler, and an `IterableDataset`, are trusted. The message says when
    the script sets `shuffle` only in a branch that tests for CUDA (read from the script's source).
    """

    code = "CC017"
    name = "training-data-not-shuffled"
    severity = Severity.WARNING
    summary = "A training DataLoader draws data stored in blocks of one class in stored order (no shuffling)."
    needs = frozenset({"labels"})

    def check_runtime(self, run: RunTrace, ctx: StaticContext) -> Iterable[Finding]:
        findings: list[Finding] = []
        seen: set[Any] = set()
        for proc in run.trainers:
            for loader in proc.of("loader"):
                key = tuple(loader.get("loc") or ()) or ("id", loader.get("id"))
                if key in seen or not _in_stored_order(proc, loader) or not _trained(proc, loader):
                    continue
                batches = _first_epoch_batches(proc, loader)
                finding = self._judge(loader, batches, ctx) if batches else None
                if finding is not None:
                    seen.add(key)
                    findings.append(finding)
        return findings

    def _judge(self, loader: Event, batches: list[Event], ctx: StaticContext) -> Finding | None:
        total = sum(b["n"] for b in batches)
        changes = sum(b["changes"] for b in batches) + sum(
            1 for a, b in zip(batches, batches[1:]) if a["last"] != b["first"])
        counts: Counter[int] = Counter()
        for b in batches:
            for label, count in b.get("counts") or []:
                counts[label] += count
        # The class shares a shuffled order would mix: the dataset's own where it stores its labels whole (then
        # batches of one class only are a certain sign of order), else those of the drawn labels.
        stored = next((b["dataset"] for b in batches if b.get("dataset")), None)
        sum_sq = stored["sum_sq"] if stored else sum((c / total) ** 2 for c in counts.values())
        expected = (total - 1) * (1 - sum_sq)
        single = [b for b in batches if b["distinct"] == 1]
        ordered = all(b["sorted"] for b in batches) and all(
            a["last"] <= b["first"] for a, b in zip(batches, batches[1:]))
        majorities = ", ".join(str(b["majority"]) for b in batches)
        where = user_location(loader.get("loc"), ctx)
        sampler = loader.get("batch_sampler_inner") or loader.get("sampler")
        evidence: dict[str, Any] = {
            "sampler": sampler, "batches_seen": len(batches), "samples_seen": total,
            "single_class_batches": len(single), "majority_label_per_batch": [b["majority"] for b in batches],
            "label_changes": changes, "label_changes_if_shuffled": round(expected, 1), "sorted": ordered,
            "labels_field": batches[0].get("field"), "classes_seen": len(counts),
        }
        if stored:
            evidence.update(dataset_samples=stored["n"], dataset_classes=stored["classes"],
                            dataset_label_changes=stored["changes"])
        cuda_only = _shuffle_only_with_cuda(ctx) if ctx is not None else None
        cuda_note = ""
        if cuda_only is not None:
            evidence["shuffle_only_with_cuda_at"] = f"{ctx.display_path}:{cuda_only}"
            cuda_note = (f" The script sets `shuffle=True` only where CUDA is available (line {cuda_only}), and this "
                         "run had no CUDA.")
        stored_note = (f" The dataset's {stored['n']} labels ({stored['classes']} classes) change "
                       f"{stored['changes']} time{'s' if stored['changes'] != 1 else ''} in stored order."
                       if stored else "")
        if stored and stored["classes"] < 2:
            return None  # one class in the whole data set: no order to shuffle
        if len(counts) < 2 and not stored:
            if len(batches) < _MIN_BATCHES or len(single) < len(batches):
                return None
            message = (f"This training DataLoader draws its samples in stored order ({sampler}: no shuffling), and "
                       f"all {len(batches)} batches it drew hold only class {batches[0]['majority']}. That is what "
                       "data sorted by class looks like at the start of an epoch, or a very imbalanced data set: "
                       "the run cannot tell which.")
            return self.finding(message, fix=_FIX, location=where, evidence=evidence, severity=Severity.INFO,
                                headline="single_class_batches")
        if expected < 1 or changes > _BLOCK_RATIO * expected:
            return None
        what = (f"{len(single)} of {len(batches)} batches hold a single class ({majorities})" if single else
                f"the batches' majority classes are {majorities}")
        head = (f"This training DataLoader draws its samples in stored order ({sampler}: no shuffling), and the "
                f"labels it drew come in blocks: {what}")
        detail = (f"; labels changed {changes} time{'s' if changes != 1 else ''} over {total} samples where the "
                  f"same classes shuffled would change about {round(expected)} times"
                  + (", and they never decrease (sorted by class)" if ordered and len(counts) > 1 else "") + ".")
        if len(batches) >= _MIN_BATCHES and expected >= _MIN_EXPECTED_CHANGES:
            message = (head + detail + stored_note
                       + " Every step trains on one class or two, not on a sample of all of them." + cuda_note)
            return self.finding(message, fix=_FIX, location=where, evidence=evidence, severity=Severity.WARNING,
                                headline="label_changes")
        message = (head + detail + stored_note + f" Only {len(batches)} batch{'es' if len(batches) != 1 else ''} "
                   f"of {total} samples were seen: too few to be sure.")
        return self.finding(message, fix=_FIX, location=where, evidence=evidence, severity=Severity.INFO,
                            headline="label_changes")


def _shuffle_only_with_cuda(ctx: StaticContext) -> int | None:
    """The line of a ``shuffle`` DataLoader argument the script sets only in a branch taken with CUDA
    (``if use_cuda: kwargs.update({"shuffle": True})``, ``{"shuffle": True} if use_cuda else {}``), if any."""
    parents: dict[int, ast.AST] = {}
    for node in ast.walk(ctx.tree):
        for child in ast.iter_child_nodes(node):
            parents[id(child)] = node
    for node in ast.walk(ctx.tree):
        keyed = isinstance(node, ast.Dict) and any(
            isinstance(k, ast.Constant) and k.value == "shuffle" and not _false(v)
            for k, v in zip(node.keys, node.values))
        named = isinstance(node, ast.Call) and call_name(node) == "dict" and any(
            k.arg == "shuffle" and not _false(k.value) for k in node.keywords)
        if not (keyed or named):
            continue
        child, parent = node, parents.get(id(node))
        while parent is not None:
            if isinstance(parent, (ast.If, ast.IfExp)) and "cuda" in ast.unparse(parent.test).lower():
                body = parent.body if isinstance(parent.body, list) else [parent.body]
                if any(child is b for b in body):
                    return node.lineno
            child, parent = parent, parents.get(id(parent))
    return None


def _false(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def _in_stored_order(proc: ProcessTrace, loader: Event) -> bool:
    """Whether a loader draws its dataset in stored order: a SequentialSampler or a non-shuffling DistributedSampler
    under torch's own BatchSampler (a custom batch sampler or sampler is trusted)."""
    if loader.get("batch_sampler") != "BatchSampler":
        return False
    sampler = loader.get("batch_sampler_inner") or loader.get("sampler")
    if sampler == "SequentialSampler":
        return True
    if sampler == "DistributedSampler":
        made = next((s for s in proc.of("sampler") if s.get("id") == loader.get("sampler_id")), None)
        return made is not None and not made.get("shuffle")
    return False


def _trained(proc: ProcessTrace, loader: Event) -> bool:
    """Whether optimizer steps ran while this loader was being drawn from (training, not evaluation)."""
    for epoch in proc.of("loader_epoch"):
        if epoch.get("loader") == loader.get("id"):
            start = epoch.get("step_start")
            if start is None or (epoch.get("step") or 0) > start:
                return True
    return False


def _first_epoch_batches(proc: ProcessTrace, loader: Event) -> list[Event]:
    """The recorded label summaries of the loader's first epoch that has any, in batch order."""
    mine = [b for b in proc.of("batch_labels") if b.get("loader") == loader.get("id")]
    if not mine:
        return []
    epoch = min(b["epoch"] for b in mine)
    return sorted((b for b in mine if b["epoch"] == epoch), key=lambda b: b["batch"])
