"""CC019 mask-masks-nothing: an attention mask shaped like a causal mask that masks nothing, so every token sees
the future ones."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from convcheck.findings import Finding, Severity
from convcheck.paths import display_loc
from convcheck.registry import Check
from convcheck.runtime.trace import Event, ProcessTrace, RunTrace
from convcheck.static.context import StaticContext
from convcheck.static.flow import user_location

_FIX = (
    "Build the causal mask lower-triangular: `torch.tril(torch.ones(T, T))` (1 where a position may attend, then "
    "`masked_fill(mask == 0, float('-inf'))`), or let attention apply it: "
    "`F.scaled_dot_product_attention(q, k, v, is_causal=True)`."
)


class MaskMasksNothing(Check):
    """## What it does
    Looks at the masks applied to attention scores in the first training steps: `masked_fill` with `-inf`
    (or a very negative value) and `F.scaled_dot_product_attention`'s `attn_mask` (with `is_causal=False`).
    A mask that is square over its last two dimensions (`[T, T]`, one for the whole batch, the shape of a
    causal mask) and masks nothing on every sampled call is reported: e.g. a buffer built with
    `torch.ones(T, T)` where `torch.tril(torch.ones(T, T))` was meant, then
    `att.masked_fill(self.bias[:, :, :T, :T] == 0, float('-inf'))`.

    Severities:
    - warning: such a mask, on every sampled call, in a model trained with a token-level loss (cross-entropy
      over every position of the sequence: next-token prediction).
    - info: such a mask without a token-level loss, or with a masked-language-model loss that counts only a
      few positions (an encoder may attend both ways on purpose; then the mask is only dead code).
    A mask with a batch dimension or of another shape (a key-padding mask, which a batch without padding
    leaves all False) is not reported.

    ## Why is this bad?
    A language model trained to predict the next token must not see it. With a mask that masks nothing,
    position t attends to position t+1 and copies it: the training loss falls suspiciously fast towards 0,
    and the model is useless for generation, where the future is not there to copy.

    ## Example
    ```python
    self.register_buffer("bias", torch.ones(T, T).view(1, 1, T, T))
    ...
    att = att.masked_fill(self.bias[:, :, :t, :t] == 0, float("-inf"))
    ```

    ## Use instead
    ```python
    self.register_buffer("bias", torch.tril(torch.ones(T, T)).view(1, 1, T, T))
    ```

    ## Fix
    Make the mask lower-triangular, or use `is_causal=True` with `F.scaled_dot_product_attention`.

    ## Known limits
    Masks are looked at during the first three optimizer steps (at most 48 calls). A mask applied some other
    way (adding a float mask to the scores, `torch.where`, `nn.MultiheadAttention`'s own `attn_mask`
    through its fast path) is not seen, nor is a causal mask that is wrong but not empty (off by one).
    """

    code = "CC019"
    name = "mask-masks-nothing"
    severity = Severity.WARNING
    summary = "An attention mask shaped like a causal mask that masks nothing: every token sees the future ones."
    needs = frozenset({"attention_masks", "graph"})

    def check_runtime(self, run: RunTrace, ctx: StaticContext) -> Iterable[Finding]:
        proc = next(iter(run.trainers), None)
        if proc is None:
            return []
        by_place: dict[tuple, list[Event]] = {}
        for event in proc.of("attention_mask"):
            by_place.setdefault(tuple(event.get("loc") or ()), []).append(event)
        findings = []
        for events in by_place.values():
            # Causal-shaped (square, one for the whole batch) and empty on every call, and seen more than once.
            if len(events) < 2 or not all(e.get("square") and e.get("shared") and e.get("masks_nothing")
                                          for e in events):
                continue
            findings.append(self._finding(proc, events, ctx))
        return findings

    def _finding(self, proc: ProcessTrace, events: list[Event], ctx: StaticContext) -> Finding:
        first = events[0]
        length = first.get("q_len") or first["mask_shape"][-1]
        token_loss = _token_loss(proc, int(length))
        where = user_location(first.get("loc"), ctx) or first.get("loc")
        shape = "×".join(str(n) for n in first["mask_shape"])
        if first.get("kind") == "sdpa":
            what = (f"scaled_dot_product_attention's attn_mask ({first.get('dtype')}, {shape}, is_causal=False) "
                    f"{'is True everywhere' if first.get('dtype') == 'torch.bool' else 'holds no -inf'}")
        else:
            what = f"masked_fill({shape} mask, {first.get('fill')}) is given a mask that is False everywhere"
        steps = sorted({e.get("step", 0) + 1 for e in events})
        span = f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}–{steps[-1]}"
        message = (f"At {display_loc(where)}, {what} in all {len(events)} sampled calls ({span}): "
                   f"a square mask shared by the whole batch, shaped like a causal mask over {length} positions, "
                   "that masks nothing, so every position attends to the positions after it.")
        losses = [e["loss"] for e in proc.of("backward") if isinstance(e.get("loss"), (int, float))]
        evidence: dict[str, Any] = {"calls": len(events), "kind": first.get("kind"), "mask_shape": first["mask_shape"],
                                    "sequence_length": length, "token_level_loss": token_loss is not None,
                                    "first_loss": losses[0] if losses else None,
                                    "last_loss": losses[-1] if losses else None}
        if token_loss is not None:
            message += (f" The model is trained on a token-level loss (cross-entropy over {token_loss} positions, "
                        f"{length} per sequence): predicting the next token, it can copy it, so the loss falls "
                        "fast and the model cannot generate.")
            severity = Severity.WARNING
        else:
            message += (" No token-level loss was seen: if the model is meant to attend both ways the mask is only "
                        "dead code; if it is a causal language model, it sees the future.")
            severity = Severity.INFO
        return self.finding(message, fix=_FIX, location=where, severity=severity, evidence=evidence,
                            headline="mask_shape")


def _token_loss(proc: ProcessTrace, length: int) -> int | None:
    """How many positions a cross-entropy loss was taken over, when it covers whole sequences of ``length``."""
    for event in proc.of("backward"):
        for node in event.get("graph") or []:
            if node.get("name") not in ("NllLossBackward0", "NllLoss2DBackward0"):
                continue
            attrs = node.get("attrs") or {}
            shape = (attrs.get("self") or {}).get("shape") or []
            counted = attrs.get("counted")
            if isinstance(counted, int) and shape and counted * 2 < _rows(shape):
                continue  # most positions ignored: a masked-language-model loss, which attends both ways
            if len(shape) == 2 and length > 1 and _flattened(event["graph"], shape[0], length):
                return int(shape[0])  # logits.view(-1, vocab): batch × positions rows
            if len(shape) >= 3 and shape[-1] == length > 1:
                # cross_entropy(logits.transpose(1, 2), targets): [batch, classes, (1,) positions]
                return int(shape[0] * shape[-1])
    return None


def _flattened(graph: list[dict[str, Any]], rows: int, length: int) -> bool:
    """Whether the graph views a [batch, length, ...] tensor as ``rows`` rows (a batch of 24 sequences classified
    one label each is not 2 sequences of 12 tokens)."""
    for node in graph:
        sizes = (node.get("attrs") or {}).get("self_sym_sizes") or []
        if len(sizes) == 3 and sizes[1] == length and sizes[0] * sizes[1] == rows:
            return True
    return False


def _rows(shape: list[int]) -> int:
    """How many predictions an NLL input of ``shape`` holds ([N, C], or [N, C, d1, ...])."""
    total = shape[0]
    for n in shape[2:]:
        total *= n
    return total
