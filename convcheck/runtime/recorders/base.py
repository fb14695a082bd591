"""The base class of every recorder (see the package's docstring)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from convcheck.runtime.patches import Patches
    from convcheck.runtime.probe import Probe


class Recorder:
    """One kind of evidence: its own state, its own hooks and patches, and the event kinds it writes.

    ``install`` runs once torch is imported, in every process of the run; patches made through
    ``patches`` are undone with the probe's. Events go through ``self.probe.emit``.
    """

    #: The name checks ask for in ``Check.needs``.
    name: ClassVar[str]
    #: The event kinds this recorder writes (documentation and the trace schema).
    events: ClassVar[tuple[str, ...]] = ()
    #: Schemas (TypedDicts) of event kinds the project does not declare itself (third-party recorders).
    schemas: ClassVar[dict[str, type]] = {}

    def __init__(self, probe: Probe) -> None:
        self.probe = probe

    def install(self, torch: Any, patches: Patches) -> None:
        """Register this recorder's hooks and patches."""

    def final_fields(self) -> dict[str, Any]:
        """Fields this recorder adds to the process's ``final`` event (what the run ends with)."""
        return {}

    def after_fork(self) -> None:
        """Reset per-process state in a forked child (a DataLoader worker)."""

    def on_root_forward(self, module: Any, args: Any) -> None:
        """Called before each outermost forward of a model, with its inputs (override to follow them)."""

    def on_backward(self, loss: Any) -> None:
        """Called after each backward pass was recorded, with the tensor it started from (override to follow it)."""

    def follows_forward(self) -> bool:
        """Whether the host must call ``on_root_forward`` (only recorders that override it pay for the call)."""
        return type(self).on_root_forward is not Recorder.on_root_forward

    def follows_backward(self) -> bool:
        """Whether the host must call ``on_backward``."""
        return type(self).on_backward is not Recorder.on_backward
