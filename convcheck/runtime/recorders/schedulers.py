"""Learning-rate scheduler steps, in order against optimizer steps (CC011)."""

from __future__ import annotations

from typing import Any

from convcheck.runtime.fields import loc, num
from convcheck.runtime.locate import caller_file, is_library_file
from convcheck.runtime.recorders.base import Recorder


class SchedulerRecorder(Recorder):
    """Every ``LRScheduler.step()``: its class, the lrs it set, the optimizer step it followed, the line,
    whether a library called it, and the scheduler's settings once (step_size, gamma, milestones …)."""

    name = "schedulers"
    events = ("sched_step",)

    def __init__(self, probe: Any) -> None:
        super().__init__(probe)
        self.count = 0

    def install(self, torch: Any, patches: Any) -> None:
        from torch.optim import lr_scheduler

        scheduler_cls = getattr(lr_scheduler, "LRScheduler", None) or lr_scheduler._LRScheduler
        # Scheduler steps have no hook; their order against optimizer steps is the evidence.
        patches.wrap(scheduler_cls, "step", self._wrap_step)

    def _wrap_step(self, original: Any) -> Any:
        recorder, probe = self, self.probe

        def step(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(self, *args, **kwargs)
            internal = is_library_file(caller_file())
            try:
                lrs = [num(v) for v in self.get_last_lr()]
            except Exception:
                lrs = []
            extra = {}
            if not getattr(self, "_convcheck_seen", False):
                # Its settings once (step_size, gamma, T_max, milestones...): what the lr will do later.
                self._convcheck_seen = True
                self._convcheck_index = recorder.count
                recorder.count += 1
                extra["settings"] = {k: num(v) for k, v in vars(self).items()
                                     if not k.startswith("_") and isinstance(v, (int, float))}
                milestones = getattr(self, "milestones", None)
                if milestones is not None:
                    extra["settings"]["milestones"] = sorted(int(m) for m in milestones)[:50]
            probe.emit("sched_step", cls=type(self).__name__, sched=getattr(self, "_convcheck_index", None),
                       step=probe.step_count, internal=internal, lrs=lrs, loc=loc(3), **extra)
            return result

        return step
