"""Attention masks in the first training steps: does a mask that looks causal mask anything (CC019)?"""

from __future__ import annotations

import math
from typing import Any

from convcheck.runtime.fields import loc
from convcheck.runtime.recorders.base import Recorder

#: Masks are looked at before this many optimizer steps only; later calls go straight to torch after one test.
_SAMPLED_STEPS = 3
_MAX_EVENTS = 48
#: A fill value at or below this blocks attention after softmax (fp16's lowest is -65504).
_BLOCKING = -1e4


class AttentionMaskRecorder(Recorder):
    """``Tensor.masked_fill`` with a -inf (or very negative) value, and ``F.scaled_dot_product_attention`` with an
    ``attn_mask``, during the first optimizer steps: the mask's shape, whether it is square over its last two
    dimensions and shared by the batch, and whether it masks anything."""

    name = "attention_masks"
    events = ("attention_mask",)

    def __init__(self, probe: Any) -> None:
        super().__init__(probe)
        self.count = 0

    def sampling(self) -> bool:
        """Whether masks are still looked at (the first steps, and a bounded number of calls)."""
        return self.probe.step_count < _SAMPLED_STEPS and self.count < _MAX_EVENTS

    def install(self, torch: Any, patches: Any) -> None:
        # Neither call has a hook. After the sampled steps the prefilter sends every call straight to torch.
        for name in ("masked_fill", "masked_fill_"):
            patches.wrap(torch.Tensor, name, self._wrap_masked_fill, when=lambda *a, **k: self.sampling())
        patches.wrap(torch.nn.functional, "scaled_dot_product_attention", self._wrap_sdpa,
                     when=lambda *a, **k: self.sampling() and _attn_mask(a, k) is not None)

    def _wrap_masked_fill(self, original: Any) -> Any:
        recorder = self

        def masked_fill(self: Any, mask: Any, value: Any) -> Any:
            fill = _scalar(value)
            if fill is not None and fill <= _BLOCKING and hasattr(mask, "any") and self.dim() >= 2:
                recorder._record("masked_fill", mask, blocked=bool(mask.any()), scores=self, fill=fill)
            return original(self, mask, value)

        return masked_fill

    def _wrap_sdpa(self, original: Any) -> Any:
        recorder = self

        def scaled_dot_product_attention(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
            mask = _attn_mask((query, key, value, *args), kwargs)
            causal = kwargs.get("is_causal", args[2] if len(args) > 2 else False)
            if mask is not None and not causal:
                import torch

                if mask.dtype == torch.bool:
                    blocked = not bool(mask.all())
                else:
                    blocked = bool((mask <= _BLOCKING).any())
                recorder._record("sdpa", mask, blocked=blocked, scores=None, fill=None,
                                 q_len=int(query.shape[-2]), k_len=int(key.shape[-2]))
            return original(query, key, value, *args, **kwargs)

        return scaled_dot_product_attention

    def _record(self, kind: str, mask: Any, *, blocked: bool, scores: Any, fill: Any, q_len: int | None = None,
                k_len: int | None = None) -> None:
        self.count += 1
        shape = [int(n) for n in mask.shape]
        if scores is not None:
            q_len, k_len = int(scores.shape[-2]), int(scores.shape[-1])
        square = len(shape) >= 2 and shape[-1] == shape[-2] > 1
        self.probe.emit("attention_mask", kind=kind, mask_shape=shape, q_len=q_len, k_len=k_len, square=square,
                        shared=all(n == 1 for n in shape[:-2]), masks_nothing=not blocked,
                        fill=fill if fill is None or math.isfinite(fill) else str(fill),
                        dtype=str(mask.dtype), loc=loc(4), step=self.probe.step_count)


def _scalar(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        return float(value) if value.numel() == 1 else None
    except Exception:
        return None


def _attn_mask(args: tuple, kwargs: dict) -> Any:
    """SDPA's ``attn_mask`` argument (the fourth positional one, or by keyword)."""
    return kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
