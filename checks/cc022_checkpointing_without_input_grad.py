"""CC022 checkpointing-without-input-grad: reentrant activation checkpointing over inputs that do not require grad,
so that the checkpointed layers get no gradient."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from convcheck.checks.cc006_frozen_parameters import ParamTable
from convcheck.findings import Finding, Severity
from convcheck.paths import display_loc
from convcheck.registry import Check
from convcheck.runtime.trace import Event, RunTrace
from convcheck.static.context import StaticContext
from convcheck.static.flow import user_location

_FIX = (
    "Pass `use_reentrant=False` to `torch.utils.checkpoint.checkpoint` (and `checkpoint_sequential`): the "
    "non-reentrant variant gives parameters inside their gradients whatever the inputs. For a Hugging Face model, "
    "`model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False})`, or call "
    "`model.enable_input_require_grads()`; otherwise make the checkpointed input require grad "
    "(`hidden.requires_grad_(True)`)."
)


class CheckpointingWithoutInputGrad(Check):
    """## What it does
    Finds calls of `torch.utils.checkpoint.checkpoint` (or `checkpoint_sequential`) in the reentrant variant
    (`use_reentrant=True`, which is still what torch uses when `use_reentrant` is not passed) whose tensor
    inputs do not require grad, typically because the layers before them are frozen (frozen embeddings with
    activation checkpointing, a fine-tuning recipe), or because the input comes from a feature extractor
    run under `torch.no_grad()`. The run records the first calls: the variant, whether grad mode was on,
    whether an input and the output require grad, and the parameters of the modules the checkpointed
    function ran; and it follows whether those parameters ever received a gradient.

    Severities:
    - error: reentrant, no input requires grad, and the trainable parameters inside never received a
      gradient in the run's optimizer steps.
    - warning: the same call, but the run took no optimizer step to show the gradients (the output did not
      require grad).
    - info: reentrant over inputs that do not require grad, but the parameters inside got gradients anyway
      (they are also used outside the checkpoint): the checkpointed call's share is missing.
    A checkpointed part with no trainable parameter (frozen on purpose) is not reported.

    ## Why is this bad?
    The reentrant variant is an `autograd.Function` that runs the wrapped function under `no_grad` and
    re-runs it in backward only when an input requires grad. When none does, its output does not require
    grad and backward never reaches the checkpointed layers: their gradients stay `None`, the optimizer
    skips them, and only the layers after the checkpoint train. torch warns "None of the inputs have
    requires_grad=True" once, easy to miss among other warnings; the loss still goes down through the head.

    ## Example
    ```python
    model.embed.requires_grad_(False)
    h = model.embed(tokens)
    for block in model.blocks:
        h = checkpoint(block, h, use_reentrant=True)   # h does not require grad: blocks get no gradient
    ```

    ## Use instead
    ```python
        h = checkpoint(block, h, use_reentrant=False)
    ```

    ## Fix
    Use `use_reentrant=False` (recommended by PyTorch), or make the checkpoint's input require grad
    (`model.enable_input_require_grads()` for Hugging Face models, `h.requires_grad_(True)` otherwise).

    ## Known limits
    The first 16 checkpoint calls of a process are recorded; the parameters inside are those of the modules
    the checkpointed function calls (a function that uses a bare parameter, not through a module, is not
    seen). A checkpoint call made by a library is located at the script's line that called the library. The
    source alone says nothing: whether an input requires grad is known only at run time.
    """

    code = "CC022"
    name = "checkpointing-without-input-grad"
    severity = Severity.ERROR
    summary = ("Reentrant activation checkpointing over inputs that do not require grad: the layers inside get no "
               "gradient.")
    needs = frozenset({"checkpointing"})

    def check_runtime(self, run: RunTrace, ctx: StaticContext) -> Iterable[Finding]:
        proc = next(iter(run.trainers), None)
        if proc is None:
            return []
        calls = [e for e in proc.of("activation_checkpoint")
                 if e.get("reentrant") and e.get("grad_enabled") and not e.get("input_requires_grad")
                 and e.get("n_tensors")]
        if not calls:
            return []
        table = ParamTable.from_trace(proc)
        steps = proc.steps
        findings = []
        by_place: dict[tuple, list[Event]] = {}
        for event in calls:
            by_place.setdefault(tuple(event.get("loc") or ()), []).append(event)
        for events in by_place.values():
            finding = self._finding(events, table, steps, ctx)
            if finding is not None:
                findings.append(finding)
        return findings

    def _finding(self, events: list[Event], table: ParamTable, steps: int, ctx: StaticContext) -> Finding | None:
        """One finding per calling line: an error when the run showed the parameters inside never got a gradient."""
        first = events[0]
        params = list(dict.fromkeys(p for e in events for p in e.get("params") or []))
        trainable = [p for p in params if p not in table.frozen]
        no_grad = [p for p in trainable if p not in table.got_grad]
        names = [table.names.get(p, f"param{p}") for p in no_grad]
        how = ("checkpoint_sequential(...)" if first.get("sequential") else f"checkpoint({first.get('function')}, ...)")
        variant = ("passes use_reentrant=True" if first.get("use_reentrant") is not None
                   else "does not pass use_reentrant, so torch runs the reentrant variant,")
        where = user_location(first.get("loc"), ctx) or first.get("loc")
        evidence: dict[str, Any] = {
            "calls": len(events), "use_reentrant": first.get("use_reentrant"), "sequential": first.get("sequential"),
            "function": first.get("function"), "output_requires_grad": first.get("output_requires_grad"),
            "trainable_inside": len(trainable), "never_given_a_gradient": names[:20], "steps": steps,
        }
        opening = f"{how} at {display_loc(where)} {variant} and none of its tensor inputs requires grad"
        if trainable and no_grad and len(no_grad) == len(trainable) and steps:
            message = (f"{opening}: its output does not require grad and backward never reaches the "
                       f"{len(trainable)} trainable parameters inside ({_names(names)}): they received no gradient "
                       f"in {steps} optimizer steps and do not train.")
            severity = Severity.ERROR
        elif trainable and not steps and first.get("output_requires_grad") is False:
            message = (f"{opening}: its output does not require grad, so the {len(trainable)} trainable parameters "
                       f"inside ({_names([table.names.get(p, f'param{p}') for p in trainable])}) get no gradient "
                       "(the run took no optimizer step to confirm it).")
            severity = Severity.WARNING
        elif trainable and len(no_grad) < len(trainable):
            message = (f"{opening}: its output does not require grad. The parameters inside received gradients "
                       "in this run all the same (they are used outside the checkpoint too), but none from this "
                       "call: its share of their gradient is missing.")
            severity = Severity.INFO
        else:
            return None  # a frozen part checkpointed: nothing inside should train
        return self.finding(message, fix=_FIX, location=where, severity=severity, evidence=evidence,
                            headline="never_given_a_gradient" if severity is Severity.ERROR else "calls")


def _names(names: list[str]) -> str:
    shown = ", ".join(f"`{n}`" for n in names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")
