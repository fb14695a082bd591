"""A small summary of a loss's autograd graph, read before backward frees saved tensors."""

from __future__ import annotations

from typing import Any

_MAX_NODES = 40
_MAX_DEPTH = 8
# Saved attributes that tell how a loss was reduced and normalized (FIELD-NOTES).
_ATTRS = (
    "_saved_reduction",
    "_saved_other",
    "_saved_self",
    "_saved_target",
    "_saved_label_smoothing",
    "_saved_ignore_index",
    "_saved_dim",
    "_saved_self_sym_sizes",
    "_saved_numel",
)


def _describe(value: Any) -> Any:
    shape = getattr(value, "shape", None)
    if shape is not None:
        desc: dict[str, Any] = {"shape": list(shape)}
        if value.numel() == 1:
            desc["value"] = float(value.detach().reshape(()).float())
        return desc
    if isinstance(value, (int, float, bool, str)) or value is None:
        return value
    if isinstance(value, (tuple, list)):
        return [_describe(v) for v in value][:8]
    return repr(value)[:80]


def _counted_targets(fn: Any) -> int | None:
    """How many targets a mean-reduced NLL/cross-entropy averaged over: those not equal to ignore_index."""
    if not type(fn).__name__.startswith("NllLoss"):
        return None
    try:
        if fn._saved_reduction != 1:
            return None
        target, ignore = fn._saved_target, fn._saved_ignore_index
        return int((target != ignore).sum())
    except (AttributeError, RuntimeError, TypeError):
        return None


def summarize_graph(grad_fn: Any) -> list[dict[str, Any]]:
    """Breadth-first list of the nodes nearest the loss: name, depth, parent index, saved attributes."""
    if grad_fn is None:
        return []
    nodes: list[dict[str, Any]] = []
    seen: set[int] = set()
    queue: list[tuple[Any, int, int]] = [(grad_fn, 0, -1)]
    while queue and len(nodes) < _MAX_NODES:
        fn, depth, parent = queue.pop(0)
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        node: dict[str, Any] = {"name": type(fn).__name__, "depth": depth, "parent": parent}
        attrs = {}
        for attr in _ATTRS:
            try:
                value = getattr(fn, attr)
            except (AttributeError, RuntimeError):
                continue
            attrs[attr[len("_saved_"):]] = _describe(value)
        counted = _counted_targets(fn)
        if counted is not None:
            attrs["counted"] = counted
        if attrs:
            node["attrs"] = attrs
        index = len(nodes)
        nodes.append(node)
        if depth < _MAX_DEPTH:
            for next_fn, _ in getattr(fn, "next_functions", ()):
                if next_fn is not None and type(next_fn).__name__ != "AccumulateGrad":
                    queue.append((next_fn, depth + 1, index))
    return nodes
