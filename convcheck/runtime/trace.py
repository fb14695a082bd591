"""Trace I/O: each process appends JSON lines to its own file; the parent reads them all.

Probes only record: every event is a plain dict with an ``ev`` key. A writer thread
flushes to disk a few times a second so that a process killed at the timeout
still leaves its trace behind.
"""

from __future__ import annotations

import json
import math
import operator
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Any event, as read; each kind's fields are typed in ``convcheck.runtime.events`` (cast to them to type-check).
Event = dict[str, Any]

_FLUSH_INTERVAL_S = 0.25
#: Events written to disk at once: a process killed right after (os._exit, SIGKILL, a segfault)
#: must not take a step it was counted for, or how it ended, with it.
DURABLE_EVENTS = frozenset({"process", "step", "stop", "crash", "end", "dist_init"})


def process_tag(pid: int | None = None) -> str:
    """``<host>-<pid>``: unique across the nodes of a job that share one trace folder."""
    return f"{socket.gethostname()}-{pid if pid is not None else os.getpid()}"


def pid_of(stem: str) -> int:
    """The pid in a ``kind-<host>-<pid>`` file name."""
    return int(stem.rsplit("-", 1)[1])


class TraceWriter:
    """Buffers events in memory and appends them to ``trace-<host>-<pid>.jsonl``."""

    def __init__(self, trace_dir: str) -> None:
        self.trace_dir = trace_dir
        self._pending: list[Event] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def path(self) -> str:
        return os.path.join(self.trace_dir, f"trace-{process_tag(self._pid)}.jsonl")

    def emit(self, event: Event) -> None:
        """Queue one event; cheap enough for every step."""
        self._pending.append(event)
        if event.get("ev") in DURABLE_EVENTS:
            self.flush()
        elif self._thread is None and not self._closed:
            self._start_thread()

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="convcheck-trace", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._closed:
            threading.Event().wait(_FLUSH_INTERVAL_S)
            self.flush()

    def flush(self) -> None:
        """Append every queued event to the file (safe to call from any thread)."""
        with self._lock:
            if not self._pending:
                return
            batch, self._pending = self._pending, []
            lines = "".join(json.dumps(e, default=_jsonable) + "\n" for e in batch)
            try:
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(lines)
            except OSError:
                # Never fail the user's training because a trace could not be written.
                self._closed = True

    def close(self) -> None:
        """Final flush; the writer thread stops."""
        self._closed = True
        self.flush()

    def reset_after_fork(self) -> None:
        """In a forked child: drop the parent's queue and write to the child's own file."""
        self._pending = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._thread = None
        self._closed = False


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    try:
        # An integer of numpy or torch (a batch size, a seed the user computed) stays an integer: the
        # event's schema says int, and 32.0 would make the line damaged.
        return operator.index(value)
    except Exception:  # noqa: BLE001 - a user's type may raise anything; the trace must still be written
        pass
    try:
        return float(value)
    except (TypeError, ValueError):
        return repr(value)


@dataclass
class ProcessTrace:
    """Everything one process recorded, in order."""

    pid: int
    events: list[Event] = field(default_factory=list)

    def of(self, *kinds: str) -> list[Event]:
        """The events of these kinds, in order."""
        return [e for e in self.events if e["ev"] in kinds]

    def first(self, kind: str) -> Event | None:
        """The first event of this kind."""
        return next((e for e in self.events if e["ev"] == kind), None)

    @property
    def header(self) -> Event:
        return self.first("process") or {}

    @property
    def rank(self) -> int | None:
        """The process's rank: from init_process_group if it called it, else from RANK."""
        init = self.first("dist_init")
        if init is not None:
            return init.get("rank")
        return self.header.get("rank")

    @property
    def world_size(self) -> int:
        init = self.first("dist_init")
        if init is not None:
            return int(init.get("world_size") or 1)
        return int(self.header.get("world_size") or 1)

    @property
    def steps(self) -> int:
        return len(self.of("step"))

    @property
    def is_trainer(self) -> bool:
        """Did this process run training steps (as opposed to a launcher or data worker)?"""
        return any(e["ev"] in ("step", "backward") for e in self.events)

    def param_names(self) -> dict[int, str]:
        """Parameter id -> qualified name, from the models the process ran."""
        names: dict[int, str] = {}
        for model in self.of("model", "unregistered_module"):
            for param in model.get("params", []):
                names.setdefault(param["id"], param["name"])
        return names

    def losses_per_step(self) -> dict[int, float]:
        """Mean recorded loss of the backward calls that fed each (1-based) optimizer step."""
        losses: dict[int, list[float]] = {}
        for event in self.of("backward"):
            if event.get("loss") is not None:
                losses.setdefault(event["step"] + 1, []).append(event["loss"])
        return {step: sum(values) / len(values) for step, values in sorted(losses.items())}

    def nonfinite_from(self, at_least: int = 3) -> int | None:
        """The step from which every recorded loss is inf/NaN, when that lasts ``at_least`` steps to the end."""
        losses = [(step, loss) for step, loss in self.losses_per_step().items() if step <= max(self.steps, 1)]
        first = None
        for step, loss in reversed(losses):
            if math.isfinite(loss):
                break
            first = step
        if first is None or sum(1 for step, _ in losses if step >= first) < at_least:
            return None
        return first

    @property
    def crash(self) -> Event | None:
        return self.first("crash")


@dataclass
class RunTrace:
    """The traces of every process one run started."""

    processes: list[ProcessTrace]
    world_size: int = 1
    steps_budget: int = 0
    #: Traces of further runs that checks asked for (``Check.extra_runs``), by label.
    variants: dict[str, RunTrace] = field(default_factory=dict)
    #: What was wrong with the trace files, one line each (file:line and why); those parts were left out.
    damaged: list[str] = field(default_factory=list)

    @property
    def trainers(self) -> list[ProcessTrace]:
        """Processes that trained, ordered by rank."""
        found = [p for p in self.processes if p.is_trainer]
        return sorted(found, key=lambda p: (p.rank if p.rank is not None else 1 << 30, p.pid))

    def events(self, *kinds: str) -> Iterator[tuple[ProcessTrace, Event]]:
        """Every event of these kinds across processes, with its process."""
        for proc in self.processes:
            for event in proc.events:
                if event["ev"] in kinds:
                    yield proc, event


def event_problem(event: Any) -> str | None:
    """Why a decoded trace line is not a usable event, or None when it is.

    A known kind must fit its schema (``convcheck.runtime.events``): a trace that breaks it was edited
    by hand, written by another version or cut short, and the event is left out. A kind with no schema
    is kept as it is.
    """
    # Imported here: the probe writes traces in every process of a run and never validates them.
    from convcheck.runtime.events import validate_event

    return _shape_problem(event) or validate_event(event)


def _shape_problem(event: Any) -> str | None:
    """Why a decoded line is no event at all: not an object, or no kind."""
    if not isinstance(event, dict):
        return f"not a JSON object but {type(event).__name__}"
    if "ev" not in event:
        return "an event without its kind ('ev')"
    if not isinstance(event["ev"], str):
        return f"field 'ev' is {type(event['ev']).__name__}, not str"
    return None


def read_trace_dir(trace_dir: str | Path, world_size: int = 1, steps_budget: int = 0) -> RunTrace:
    """Read every process's trace file; damaged files and lines are left out and listed in ``damaged``.

    A torn last line (a process killed mid-write) is dropped silently: that is how traces end.
    """
    from convcheck.runtime.events import validate_event

    processes = []
    damaged: list[str] = []
    for path in sorted(Path(trace_dir).glob("trace-*.jsonl")):
        try:
            pid = pid_of(path.stem)
        except (ValueError, IndexError):
            damaged.append(f"{path.name}: not named trace-<host>-<pid>.jsonl; the file was left out")
            continue
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as exc:
            damaged.append(f"{path.name}: cannot be read ({exc.strerror or exc}); left out")
            continue
        events = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                if number != len(lines):
                    damaged.append(f"{path.name}:{number}: not JSON; the line was left out")
                continue
            problem = _shape_problem(event) or validate_event(event)
            if problem is not None:
                damaged.append(f"{path.name}:{number}: {problem}; the line was left out")
                continue
            events.append(event)
        processes.append(ProcessTrace(pid=pid, events=events))
    return RunTrace(processes=processes, world_size=world_size, steps_budget=steps_budget, damaged=damaged)


def load_events(events: list[Event], pid: int = 1) -> ProcessTrace:
    """A ProcessTrace from a list of events (for tests of checks on recorded traces)."""
    return ProcessTrace(pid=pid, events=list(events))
