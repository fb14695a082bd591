"""Python warnings the run raised, with the user's line (CC011, CC012)."""

from __future__ import annotations

from typing import Any

from convcheck.runtime.fields import loc
from convcheck.runtime.recorders.base import Recorder

_MAX_WARNINGS = 50


class WarningRecorder(Recorder):
    """The first 50 warnings shown: category, message, origin and the user's line. PyTorch reports silent
    shape bugs (a broadcast target in ``mse_loss``) and a scheduler stepped before the optimizer as warnings only."""

    name = "warnings"
    events = ("warning",)

    def __init__(self, probe: Any) -> None:
        super().__init__(probe)
        self.count = 0

    def install(self, torch: Any, patches: Any) -> None:
        import warnings

        patches.wrap(warnings, "showwarning", self._wrap_showwarning)

    def _wrap_showwarning(self, original: Any) -> Any:
        recorder, probe = self, self.probe

        def showwarning(message: Any, category: Any, filename: str, lineno: int, *args: Any, **kwargs: Any) -> Any:
            if recorder.count < _MAX_WARNINGS:
                recorder.count += 1
                probe.emit("warning", category=getattr(category, "__name__", str(category)),
                           message=str(message)[:500], origin=[filename, lineno], loc=loc(3),
                           step=probe.step_count)
            return original(message, category, filename, lineno, *args, **kwargs)

        return showwarning
