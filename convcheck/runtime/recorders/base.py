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
