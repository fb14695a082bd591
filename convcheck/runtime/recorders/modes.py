"""Where modules were switched between training and evaluation mode (CC009)."""

from __future__ import annotations

from typing import Any

from convcheck.runtime.fields import loc
from convcheck.runtime.recorders.base import Recorder


class ModeRecorder(Recorder):
    """Every outermost ``Module.train()``/``eval()`` call: the mode, the module's class and id, the step and the
    line. ``Module.train`` recurses into every child: only the outermost call is recorded."""

    name = "modes"
    events = ("train_mode",)

    def __init__(self, probe: Any) -> None:
        super().__init__(probe)
        self.depth = 0

    def install(self, torch: Any, patches: Any) -> None:
        # model.train()/model.eval() have no hook; where the mode was last set locates CC009's finding.
        patches.wrap(torch.nn.Module, "train", self._wrap_train)

    def _wrap_train(self, original: Any) -> Any:
        recorder, probe = self, self.probe

        def train(self: Any, mode: bool = True) -> Any:
            if recorder.depth == 0:
                probe.emit("train_mode", mode=bool(mode), cls=type(self).__name__, obj=id(self),
                           step=probe.step_count, loc=loc(3))
            recorder.depth += 1
            try:
                return original(self, mode)
            finally:
                recorder.depth -= 1

        return train
