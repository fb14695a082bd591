"""Recorders: the probe's evidence, one kind of evidence per class, installed on demand.

The probe is a host: it owns the step clock, the trace writer and the reversible patch
registry, and records what every check and the run itself depend on (steps, losses,
parameters and gradients, models, data loading and epoch ends, AMP, DDP, checkpoints
and file redirection). Everything else is a recorder that a check asks for by name
(``Check.needs``): the runner installs the union for the selected checks only, so
``--select CC004`` pays for no RNG, scheduler or loss-graph recording.

A third-party package registers a recorder under the ``convcheck.recorders`` entry-point
group, next to its check under ``convcheck.checks``; see docs/plugins.md.
"""

from __future__ import annotations

import inspect
from importlib.metadata import entry_points
from typing import Any

from convcheck.runtime.recorders.base import Recorder

__all__ = ["ENTRY_POINT_GROUP", "Recorder", "available_recorders", "builtin_recorders", "needed_by",
           "recorders_for", "register_schemas", "third_party_recorders"]

ENTRY_POINT_GROUP = "convcheck.recorders"


def builtin_recorders() -> dict[str, type[Recorder]]:
    """The recorders shipped with convcheck, by name."""
    from convcheck.runtime.recorders.ampdevice import AmpDeviceRecorder
    from convcheck.runtime.recorders.attention import AttentionMaskRecorder
    from convcheck.runtime.recorders.checkpointing import CheckpointRecorder
    from convcheck.runtime.recorders.datasets import DatasetRecorder
    from convcheck.runtime.recorders.ddpsync import DdpSyncRecorder
    from convcheck.runtime.recorders.gradflow import GradFlowRecorder
    from convcheck.runtime.recorders.graph import LossGraphRecorder
    from convcheck.runtime.recorders.inputs import InputRecorder
    from convcheck.runtime.recorders.labels import LabelRecorder
    from convcheck.runtime.recorders.modes import ModeRecorder
    from convcheck.runtime.recorders.provenance import BatchProvenanceRecorder
    from convcheck.runtime.recorders.pywarnings import WarningRecorder
    from convcheck.runtime.recorders.schedulers import SchedulerRecorder
    from convcheck.runtime.recorders.seeding import SeedingRecorder

    return {cls.name: cls for cls in (SeedingRecorder, SchedulerRecorder, LossGraphRecorder, ModeRecorder,
                                      WarningRecorder, BatchProvenanceRecorder, LabelRecorder, DatasetRecorder,
                                      InputRecorder, DdpSyncRecorder, AmpDeviceRecorder, CheckpointRecorder,
                                      AttentionMaskRecorder, GradFlowRecorder)}


def third_party_recorders() -> dict[str, type[Recorder]]:
    """Recorders other packages register under the ``convcheck.recorders`` entry-point group."""
    found = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        if inspect.isclass(obj) and issubclass(obj, Recorder):
            found[obj.name] = obj
    return found


def available_recorders() -> dict[str, type[Recorder]]:
    """Every recorder that can be installed, built-in first (a built-in name cannot be taken over)."""
    return {**third_party_recorders(), **builtin_recorders()}


def recorders_for(names: set[str] | None) -> dict[str, type[Recorder]]:
    """The recorder classes to install for ``names`` (None: every one). Third-party entry points are read
    only when a name is not built in: scanning installed packages costs tens of ms in every process."""
    builtin = builtin_recorders()
    if names is not None and names <= set(builtin):
        return builtin
    return available_recorders()


def register_schemas(recorders: dict[str, type[Recorder]] | None = None) -> None:
    """Declare the event kinds third-party recorders write, so that their events are validated as typed."""
    from convcheck.runtime.events import SCHEMAS, register_event_schema

    for cls in (recorders or available_recorders()).values():
        for kind, schema in cls.schemas.items():
            if SCHEMAS.get(kind) is not schema:
                register_event_schema(kind, schema)


def needed_by(checks: list[Any]) -> list[str]:
    """The recorders the given checks need, sorted (the probe's own evidence is always recorded)."""
    return sorted({name for check in checks for name in getattr(check, "needs", ())})
