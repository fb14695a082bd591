"""Per-step tensor statistics, taken on sampled steps only: norms, updates, histograms.

Everything here reduces tensors on their device and crosses to the host once per call,
so the cost is a handful of fused kernels per sampled step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: Parameters are copied before a sampled step (to measure the update ||dw||) only up to
#: this many bytes in all, in parameter order: the rest get no update ratio, rather than
#: the probe doubling the parameters' memory (the peak-RSS target is 1.10x).
SNAPSHOT_BUDGET_BYTES = 32 * 1024 * 1024
HISTOGRAM_BINS = 30
#: Histograms are taken for the largest parameters only.
HISTOGRAM_LAYERS = 4


@dataclass
class Snapshot:
    """The parameters just before a sampled step."""

    norms: list[float]
    #: One copy per parameter, None where the budget ran out; None when not sampled.
    copies: list[Any | None] | None


def norms(torch: Any, tensors: list[Any]) -> list[float]:
    """The L2 norm of each tensor, in one host transfer."""
    if not tensors:
        return []
    with torch.no_grad():
        detached = [t.detach() for t in tensors]
        try:
            values = torch._foreach_norm(detached)
        except Exception:
            values = [t.float().norm() for t in detached]
        return [float(v) for v in torch.stack([n.float().cpu() for n in values]).tolist()]


def update_sampled(step: int) -> bool:
    """Whether the step's update ||dw|| is measured: the first three and every fiftieth.

    Measuring it copies the parameters (fresh pages: about 0.5 ms per MB), so it is
    sampled more sparsely than the norms.
    """
    return step <= 3 or step % 50 == 0


def snapshot(torch: Any, params: list[Any], copy: bool) -> Snapshot:
    """Norms before the step, and copies when asked and they fit the budget."""
    copies = None
    if copy:
        copies, spent = [], 0
        with torch.no_grad():
            for p in params:
                size = p.numel() * p.element_size()
                fits = spent + size <= SNAPSHOT_BUDGET_BYTES
                copies.append(p.detach().clone() if fits else None)
                spent += size if fits else 0
    return Snapshot(norms=norms(torch, params), copies=copies)


def measure(torch: Any, before: Snapshot, params: list[Any], grads: list[Any]) -> dict[str, Any]:
    """After the step: parameter, gradient and update norms, what changed, non-finite share."""
    after = norms(torch, params)
    stats: dict[str, Any] = {
        "param_norms": after,
        "grad_norms": norms(torch, grads),
        "changed_mask": [b != a for b, a in zip(before.norms, after)],
    }
    if before.copies is not None:
        pairs = [(c, p.detach()) for c, p in zip(before.copies, params) if c is not None]
        if pairs:
            with torch.no_grad():
                # In place: the copies become -dw, whose norm is ||dw||; no new allocation.
                torch._foreach_sub_([c for c, _ in pairs], [p for _, p in pairs])
            measured = iter(norms(torch, [c for c, _ in pairs]))
            stats["update_norms"] = [next(measured) if c is not None else None for c in before.copies]
            # ||dw|| / ||w|| against the weights before the step: how far one step moved each parameter.
            stats["update_ratios"] = [u / w if u is not None and w > 0 and math.isfinite(w) else None
                                      for u, w in zip(stats["update_norms"], before.norms)]
    total = sum(g.numel() for g in grads)
    stats["nonfinite_grad_fraction"] = 0.0
    suspects = [g for g, n in zip(grads, stats["grad_norms"]) if not math.isfinite(n)]
    if suspects and total:
        # A finite norm proves every element finite: count elements only in the others.
        with torch.no_grad():
            bad = sum(int(g.numel() - torch.isfinite(g.detach()).sum()) for g in suspects)
        stats["nonfinite_grad_fraction"] = bad / total
    return stats


def histogram(torch: Any, tensor: Any) -> dict[str, Any]:
    """TensorBoard's raw histogram fields for one tensor."""
    with torch.no_grad():
        values = tensor.detach()
        if values.dtype != torch.float32:
            values = values.float()
        values = values.reshape(-1)
        squares = float(values.norm()) ** 2
        if not math.isfinite(squares):
            # Rare: only then pay for a filtered copy.
            values = values[torch.isfinite(values)]
            squares = float(values.norm()) ** 2
        if values.numel() == 0:
            return {"min": 0.0, "max": 0.0, "num": 0, "sum": 0.0, "sum_squares": 0.0, "limits": [], "counts": []}
        low, high = (float(v) for v in torch.aminmax(values))
        if low == high:
            high = low + 1e-12
        counts = torch.histc(values, bins=HISTOGRAM_BINS, min=low, max=high)
        step = (high - low) / HISTOGRAM_BINS
        return {
            "min": low, "max": high, "num": int(values.numel()), "sum": float(values.sum()),
            "sum_squares": squares,
            "limits": [low + step * (i + 1) for i in range(HISTOGRAM_BINS)],
            "counts": [float(c) for c in counts.tolist()],
        }
