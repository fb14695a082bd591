"""A digest of each DataLoader's dataset, taken without reading a sample, to compare across ranks (CC018)."""

from __future__ import annotations

import hashlib
from typing import Any

from convcheck.runtime.recorders.base import Recorder

#: Loaders whose datasets are digested (a script that builds loaders in a loop needs no more).
_MAX_LOADERS = 16
#: Subset indices written to the trace, to tell how much two ranks' subsets share.
_MAX_INDICES = 4096
#: Elements hashed in full; a longer list or tensor is hashed from this many strided elements.
_MAX_HASHED = 1 << 18
_STRIDED = 4096
#: Hashes kept to estimate how many names two lists share.
_SKETCH = 64
#: Attributes of a dataset that commonly hold its samples, file names or labels.
_ATTRS = ("indices", "samples", "imgs", "files", "file_list", "filenames", "paths", "image_paths", "data",
          "targets", "labels")


class DatasetRecorder(Recorder):
    """``DataLoader.__init__``: the dataset's class and length, and digests of what identifies its samples without
    calling ``__getitem__``: a ``Subset``'s indices (what ``random_split`` draws), a ``TensorDataset``'s tensors, a
    dataset's list of file names or samples, recursively through ``Subset``, ``ConcatDataset`` and a ``dataset``
    attribute. Written as a ``dataset_digest`` event per loader."""

    name = "datasets"
    events = ("dataset_digest",)

    def install(self, torch: Any, patches: Any) -> None:
        from torch.utils.data import DataLoader

        self._torch = torch
        recorder = self

        # The probe's own wrapper (inside this one) numbers the loader; no hook reports a loader's creation.
        def wrap_init(original: Any) -> Any:
            def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
                original(self, *args, **kwargs)
                recorder.note(self)

            return __init__

        patches.wrap(DataLoader, "__init__", wrap_init)

    def note(self, loader: Any) -> None:
        """Digest ``loader``'s dataset."""
        probe = self.probe
        index = probe.loader_ids.get(id(loader))
        if index is None or index >= _MAX_LOADERS:
            return
        dataset = loader.dataset
        parts: list[dict[str, Any]] = []
        self._digest(dataset, "dataset", parts, 0)
        try:
            length = len(dataset)
        except Exception:
            length = None
        probe.emit("dataset_digest", loader=index, cls=type(dataset).__name__, len=length, parts=parts[:16])

    def _digest(self, dataset: Any, path: str, parts: list[dict[str, Any]], depth: int) -> None:
        if depth > 3 or len(parts) >= 16:
            return
        torch = self._torch
        from torch.utils.data import ConcatDataset, Subset, TensorDataset

        if isinstance(dataset, Subset):
            _add(parts, dataset.indices, f"{path}.indices", "subset_indices", torch)
            self._digest(dataset.dataset, f"{path}.dataset", parts, depth + 1)
            return
        if isinstance(dataset, ConcatDataset):
            for i, part in enumerate(list(dataset.datasets)[:8]):
                self._digest(part, f"{path}.datasets[{i}]", parts, depth + 1)
            return
        if isinstance(dataset, TensorDataset):
            for i, tensor in enumerate(dataset.tensors[:4]):
                _add(parts, tensor, f"{path}.tensors[{i}]", "tensor", torch)
            return
        try:
            attrs = vars(dataset)
        except TypeError:
            return
        for name in _ATTRS:
            value = attrs.get(name)
            if isinstance(value, (list, tuple)) and value:
                kind = "names" if _is_names(value) else "values"
                _add(parts, value, f"{path}.{name}", kind, torch)
            elif isinstance(value, torch.Tensor) or type(value).__name__ == "ndarray":
                _add(parts, value, f"{path}.{name}", "tensor", torch)
        inner = attrs.get("dataset")
        if inner is not None and inner is not dataset and hasattr(inner, "__getitem__"):
            self._digest(inner, f"{path}.dataset", parts, depth + 1)


def _add(parts: list[dict[str, Any]], value: Any, path: str, kind: str, torch: Any) -> None:
    """Append the digest of one part; a part that cannot be digested (an object array) is left out."""
    try:
        parts.append(_sequence(value, path, kind, torch))
    except Exception:
        pass


def _is_names(value: list[Any] | tuple[Any, ...]) -> bool:
    """Whether a list holds file names or (name, label) samples: strings that identify samples."""
    first = value[0]
    if isinstance(first, tuple) and first:
        first = first[0]
    return isinstance(first, str) or type(first).__name__.endswith("Path")


def _sequence(value: Any, path: str, kind: str, torch: Any) -> dict[str, Any]:
    """Length, an order digest and an order-free digest of a list, range, array or tensor."""
    if isinstance(value, torch.Tensor) or type(value).__name__ == "ndarray":
        tensor = torch.as_tensor(value).detach()
        n = int(tensor.shape[0]) if tensor.dim() else 1
        flat = tensor.reshape(-1)
        if flat.numel() > _MAX_HASHED:
            flat = flat[:: max(1, flat.numel() // _STRIDED)]
        items = flat.cpu().tolist()
        digest = _hash(repr([list(tensor.shape), str(tensor.dtype), items]))
        part: dict[str, Any] = {"path": path, "kind": kind, "n": n, "digest": digest, "set_digest": None}
        if kind == "subset_indices":
            part["set_digest"] = _hash(repr(sorted(items)))
            part["indices"] = [int(v) for v in items[:_MAX_INDICES]]
        return part
    # Indices and names are cheap to hash in full; other samples (tuples of tensors) only from a stride.
    limit = _MAX_HASHED if kind in ("subset_indices", "names") else _STRIDED
    items = list(value) if len(value) <= limit else list(value)[:: max(1, len(value) // _STRIDED)]
    if kind == "subset_indices":
        ints = [int(v) for v in items]
        return {"path": path, "kind": kind, "n": len(value), "digest": _hash(repr(ints)),
                "set_digest": _hash(repr(sorted(ints))), "indices": ints[:_MAX_INDICES]}
    texts = [_text(v) for v in items]
    part = {"path": path, "kind": kind, "n": len(value), "digest": _hash(repr(texts)),
            "set_digest": _hash(repr(sorted(texts)))}
    if kind == "names":
        part["head"] = [(v[0] if isinstance(v, tuple) else v) for v in items[:3]]
        part["head"] = [str(v)[:200] for v in part["head"]]
        # The smallest hashes of the names: a fixed-size sample of the set, the same wherever two sets agree,
        # from which the share of names two ranks have in common is estimated (a bottom-k sketch).
        part["sketch"] = sorted({_hash(t) for t in texts})[:_SKETCH]
    return part


def _text(value: Any) -> str:
    """A stable text for a list element (a tensor or array by its shape and a few values)."""
    if hasattr(value, "shape") and hasattr(value, "reshape"):
        try:
            return f"{tuple(value.shape)}:{value.reshape(-1)[:8].tolist()!r}"
        except Exception:
            return f"{type(value).__name__}{tuple(value.shape)}"
    if isinstance(value, tuple):
        return repr(tuple(_text(v) for v in value))
    text = repr(value)
    # The default repr of an object holds its address, which differs from process to process.
    return type(value).__name__ if " at 0x" in text else text[:200]


def _hash(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
