"""The class labels of each DataLoader's first batches, summarized per batch (CC017)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from convcheck.runtime.recorders.base import Recorder

#: Batches summarized at the start of each epoch, and epochs per loader: the order is evident at once.
_BATCHES = 8
_EPOCHS = 2
#: Labels a batch may hold to be summarized (more is no classification batch worth reading on the host).
_MAX_LABELS = 1 << 16
#: A dataset's stored labels are summarized up to this many.
_MAX_STORED = 10_000_000
#: ``[label, count]`` pairs kept per batch.
_COUNTS = 10
#: Keys of a dict batch that name its labels, by priority.
_LABEL_KEYS = ("label", "labels", "target", "targets", "y", "class", "classes", "cls")


class LabelRecorder(Recorder):
    """``__next__`` of every DataLoader iterator: on an epoch's first batches, the 1-D integer tensor of the batch
    that holds its class labels (a dict's ``label``/``target`` entry, else the last such tensor as long as the
    batch), summarized as a ``batch_labels`` event. Reads the batch the loader already yielded; nothing else."""

    name = "labels"
    events = ("batch_labels",)

    def install(self, torch: Any, patches: Any) -> None:
        from torch.utils.data import dataloader as dl

        self._torch = torch
        self._integer = frozenset({torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8})
        recorder = self

        # The probe's own __next__ wrapper (inside this one) counts the batch; no hook sees the batch itself.
        def wrap_next(original: Any) -> Any:
            def __next__(self: Any) -> Any:
                batch = original(self)
                recorder.note(self, batch)
                return batch

            return __next__

        patches.wrap(dl._BaseDataLoaderIter, "__next__", wrap_next, deliberate=(StopIteration,))

    def note(self, iterator: Any, batch: Any) -> None:
        """Summarize ``batch``'s labels if it is among its epoch's first batches."""
        probe = self.probe
        if probe.repeat_first_batch:
            return
        record = probe._open_epochs.get(id(iterator))
        if record is None or record["batches"] > _BATCHES or record["epoch"] > _EPOCHS:
            return
        found = find_labels(batch, self._integer)
        if found is None:
            return
        field, labels = found
        values = [int(v) for v in labels.detach().reshape(-1).tolist()]
        extra = {}
        loader = getattr(iterator, "_convcheck_loader", None)
        if record["batches"] == 1 and record["epoch"] == 1 and loader is not None:
            stored = stored_labels(loader.dataset, field, self._torch)
            if stored is not None:
                extra["dataset"] = stored
        probe.emit("batch_labels", loader=record["loader"], epoch=record["epoch"], batch=record["batches"],
                   field=field, step=probe.step_count, **summarize(values), **extra)


def find_labels(batch: Any, integer: frozenset[Any]) -> tuple[str, Any] | None:
    """Where a batch's class labels are, and the tensor: a 1-D tensor of an ``integer`` dtype as long as the batch
    (a dict's ``label``/``target`` entry first, else the last one)."""
    tensors = list(_tensors(batch, ""))
    rows = next((t.shape[0] for _, t in tensors if t.is_floating_point() and t.dim() >= 1), None)
    labels = [(path, t) for path, t in tensors
              if t.dtype in integer and t.dim() == 1 and 2 <= t.shape[0] <= _MAX_LABELS
              and (rows is None or t.shape[0] == rows)]
    if not labels:
        return None
    for key in _LABEL_KEYS:
        named = [(p, t) for p, t in labels if p.lower() == f"[{key!r}]"]
        if named:
            return named[0]
    return labels[-1]


def stored_labels(dataset: Any, field: str, torch: Any) -> dict[str, Any] | None:
    """How a dataset's own labels are spread over classes and ordered, where it holds them as one tensor or list
    (a TensorDataset's integer tensor at the batch's label position, a ``targets``/``labels`` attribute), read
    through Subsets; None otherwise. No sample is read."""
    labels = _stored_labels(dataset, field, torch, 0)
    if labels is None:
        return None
    labels = torch.as_tensor(labels).detach().reshape(-1)
    if labels.is_floating_point() or labels.dtype == torch.bool or not 2 <= labels.numel() <= _MAX_STORED:
        return None
    labels = labels.cpu().long()
    classes, counts = torch.unique(labels, return_counts=True)
    n = labels.numel()
    order = torch.argsort(counts, descending=True)[:_COUNTS].tolist()
    return {"n": n, "classes": int(classes.numel()), "sum_sq": float(((counts.double() / n) ** 2).sum()),
            "changes": int((labels[1:] != labels[:-1]).sum()),
            "counts": [[int(classes[i]), int(counts[i])] for i in order]}


def summarize(values: list[int]) -> dict[str, Any]:
    """A batch's labels in a few numbers: distinct, majority and share, changes, longest run, order, counts."""
    counts = Counter(values).most_common()
    changes = sum(1 for a, b in zip(values, values[1:]) if a != b)
    longest = run = 1
    for a, b in zip(values, values[1:]):
        run = run + 1 if a == b else 1
        longest = max(longest, run)
    return {"n": len(values), "distinct": len(counts), "majority": counts[0][0],
            "share": round(counts[0][1] / len(values), 4), "changes": changes, "run": longest,
            "first": values[0], "last": values[-1], "sorted": all(a <= b for a, b in zip(values, values[1:])),
            "counts": [[label, count] for label, count in counts[:_COUNTS]]}


def _stored_labels(dataset: Any, field: str, torch: Any, depth: int) -> Any:
    """The labels a dataset stores as a whole (a tensor, array or list), through Subsets; None if not found."""
    from torch.utils.data import Subset, TensorDataset

    if depth > 3:
        return None
    if isinstance(dataset, Subset):
        inner = _stored_labels(dataset.dataset, field, torch, depth + 1)
        if inner is None:
            return None
        return torch.as_tensor(inner)[torch.as_tensor(list(dataset.indices), dtype=torch.long)]
    if isinstance(dataset, TensorDataset):
        position = field[1:-1]
        if position.isdigit() and int(position) < len(dataset.tensors):
            return dataset.tensors[int(position)]
        return None
    attrs = getattr(dataset, "__dict__", {})
    for name in ("targets", "labels"):
        value = attrs.get(name)
        if isinstance(value, (list, tuple)) and value and isinstance(value[0], int):
            return value
        if isinstance(value, torch.Tensor) or type(value).__name__ == "ndarray":
            return value
    return None


def _tensors(value: Any, path: str, depth: int = 0) -> Any:
    """(path, tensor) for each tensor of a batch, in order (tuples, lists, namedtuples, dicts)."""
    if hasattr(value, "is_floating_point") and hasattr(value, "dim"):
        yield path, value
    elif depth < 2 and isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            yield from _tensors(item, f"{path}[{i}]", depth + 1)
    elif depth < 2 and isinstance(value, dict):
        for key, item in list(value.items())[:32]:
            yield from _tensors(item, f"{path}[{key!r}]", depth + 1)
