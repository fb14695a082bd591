"""An external convcheck plug-in: a check and the recorder that gathers its evidence.

EX001 all-targets-ignored: a cross-entropy call in which every target equals
``ignore_index`` (a padding mask applied to the labels by mistake, or a label shift
that left nothing but padding): the loss is NaN, or 0 with ``reduction="sum"``, and
the batch teaches nothing.
"""

from __future__ import annotations

from typing import Any

from typing_extensions import TypedDict  # pydantic validates it on Python < 3.12

from convcheck.findings import Severity
from convcheck.registry import Check
from convcheck.runtime.recorders import Recorder


class CrossEntropyEvent(TypedDict):
    """One recorded cross-entropy call: how many targets it had and how many were ignored."""

    targets: int
    ignored: int
    step: int
    loc: list | None


class CrossEntropyRecorder(Recorder):
    """The first cross-entropy calls of each process: targets and ignored targets."""

    name = "cross-entropy-targets"
    events = ("ex_cross_entropy",)
    schemas = {"ex_cross_entropy": CrossEntropyEvent}
    limit = 50

    def install(self, torch: Any, patches: Any) -> None:
        import torch.nn.functional as F

        self.calls = 0
        patches.wrap(F, "cross_entropy", self._wrap)

    def _wrap(self, original: Any) -> Any:
        from convcheck.runtime.fields import loc

        recorder = self

        def cross_entropy(input: Any, target: Any, *args: Any, **kwargs: Any) -> Any:
            if recorder.calls < recorder.limit and getattr(target, "dtype", None) is not None \
                    and not target.dtype.is_floating_point:
                recorder.calls += 1
                ignore = kwargs.get("ignore_index", -100)
                recorder.probe.emit("ex_cross_entropy", targets=int(target.numel()),
                                    ignored=int((target == ignore).sum()), step=recorder.probe.step_count,
                                    loc=loc(3))
            return original(input, target, *args, **kwargs)

        return cross_entropy

    def after_fork(self) -> None:
        self.calls = 0


class AllTargetsIgnored(Check):
    """## What it does
    Finds cross-entropy calls in which every target equals `ignore_index`.

    ## Why is this bad?
    The loss of such a batch is NaN (mean over zero targets) and it teaches nothing.

    ## Example
    ```python
    labels[attention_mask == 1] = -100   # meant: == 0
    ```

    ## Use instead
    ```python
    labels[attention_mask == 0] = -100
    ```

    ## Fix
    Mask only the padding positions of the labels.

    ## Known limits
    Only `torch.nn.functional.cross_entropy` (and `nn.CrossEntropyLoss`, which calls it), first 50 calls.
    """

    code = "EX001"
    name = "all-targets-ignored"
    severity = Severity.ERROR
    summary = "A cross-entropy call whose targets are all ignore_index."
    needs = frozenset({"cross-entropy-targets"})

    def check_runtime(self, run: Any, ctx: Any) -> list:
        for proc in run.trainers:
            for event in proc.of("ex_cross_entropy"):
                if event["targets"] and event["ignored"] == event["targets"]:
                    return [self.finding(
                        f"All {event['targets']} targets of the cross-entropy at step {event['step']} equal "
                        "ignore_index: the loss is NaN and the batch teaches nothing.",
                        fix="Mask only the padding positions of the labels.", location=event["loc"])]
        return []
