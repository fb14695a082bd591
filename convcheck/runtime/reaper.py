"""Finding and stopping every process a run started, even those that left its process group.

A script can start children with ``start_new_session=True``, ``setsid`` or
``process_group=0``; killing the worker's process group misses them, and once their
parent dies they are re-parented away from convcheck. On Linux convcheck becomes a
child subreaper (``PR_SET_CHILD_SUBREAPER``), so such orphans are re-parented to it
and remain its descendants; every process of a run also carries the run's
``CONVCHECK_TRACE_DIR`` in its environment, which tells runs apart. A run folder
records its owner, so that the next run can clean up after a convcheck that was
killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from pathlib import Path

_PR_SET_CHILD_SUBREAPER = 36
_OWNER_FILE = "owner"
RUN_PREFIX = "convcheck-run-"


def become_subreaper() -> bool:
    """Make orphaned descendants of this process its children again (Linux); True when it worked."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may itself hold spaces or parentheses.
    return text[text.rfind(")") + 2:].split()


def alive(pid: int) -> bool:
    """Is ``pid`` a live process (not gone, not a zombie)?"""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def start_ticks(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (tells a pid from a reused one)."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def _parents() -> dict[int, int]:
    parents = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    return parents


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (children first), zombies left out."""
    if not os.path.isdir("/proc"):
        return []
    children: dict[int, list[int]] = {}
    for pid, ppid in _parents().items():
        children.setdefault(ppid, []).append(pid)
    found, queue = [], list(children.get(root, []))
    while queue:
        pid = queue.pop(0)
        found.append(pid)
        queue.extend(children.get(pid, []))
    return found


def _trace_dir_of(pid: int) -> bytes | None:
    try:
        data = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    for item in data.split(b"\0"):
        if item.startswith(b"CONVCHECK_TRACE_DIR="):
            return item.split(b"=", 1)[1]
    return None


def tagged(trace_dir: Path, among: list[int] | None = None, below: bool = False) -> list[int]:
    """Processes (of ``among``, or all readable ones) of the run whose trace folder is ``trace_dir``.

    With ``below``, any trace folder inside ``trace_dir`` counts too (a run folder and its extra runs).
    """
    if not os.path.isdir("/proc"):
        return []
    wanted = os.fsencode(str(trace_dir))
    pool = among if among is not None else [int(e.name) for e in os.scandir("/proc") if e.name.isdigit()]
    found = []
    for pid in pool:
        value = _trace_dir_of(pid) if pid != os.getpid() else None
        if value is not None and (value == wanted or (below and value.startswith(wanted + b"/"))):
            found.append(pid)
    return found


def kill(pids: list[int]) -> None:
    """SIGKILL each process, then collect those that became this process's children."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    reap(pids)


def reap(pids: list[int]) -> None:
    """Wait for those of ``pids`` that are (re-parented) children of this process, so no zombie stays."""
    deadline = time.monotonic() + 2.0
    pending = set(pids)
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pending.discard(pid)  # not our child: init or its own parent collects it
                continue
            if done:
                pending.discard(pid)
        if pending:
            time.sleep(0.01)


def stop_run(worker_pids: list[int], trace_dir: Path, ns_inode: int | None = None) -> None:
    """Kill every process of one run: the workers, their trees, the run's orphans re-parented here,
    and everything inside the run's mount namespace (``ns_inode``) when it has one."""
    from convcheck.runtime.sandbox import members

    for _ in range(3):  # a tree may still be forking while it is killed: look again
        doomed = set(worker_pids)
        for pid in worker_pids:
            doomed.update(descendants(pid))
        doomed.update(tagged(trace_dir, descendants(os.getpid())))
        if ns_inode is not None:
            doomed.update(members(ns_inode))
        living = [pid for pid in doomed if alive(pid)]
        if not living:
            return
        for pid in worker_pids:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        kill(sorted(set(living) - set(worker_pids)))
        for pid in worker_pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def sweep_since(ticks: int | None) -> None:
    """Kill this process's descendants that started at or after ``ticks`` (the end of a whole command)."""
    if ticks is None:
        return
    late = [pid for pid in descendants(os.getpid()) if (start_ticks(pid) or 0) >= ticks]
    kill(late)


def claim(run_dir: Path) -> None:
    """Record this process as the run folder's owner."""
    try:
        (run_dir / _OWNER_FILE).write_text(f"{os.getpid()} {start_ticks(os.getpid()) or 0}\n", encoding="utf-8")
    except OSError:
        pass


def _owner_alive(run_dir: Path) -> bool | None:
    try:
        pid_text, ticks_text = (run_dir / _OWNER_FILE).read_text(encoding="utf-8").split()
        pid, ticks = int(pid_text), int(ticks_text)
    except (OSError, ValueError):
        return None
    return start_ticks(pid) == ticks


def clean_stale_runs(temp_dir: str | None = None) -> list[Path]:
    """Remove run folders (and their processes) left by a convcheck that was killed; what was removed."""
    removed = []
    for run_dir in Path(temp_dir or tempfile.gettempdir()).glob(f"{RUN_PREFIX}*"):
        if not run_dir.is_dir() or _owner_alive(run_dir) is not False:
            continue
        from convcheck.runtime.sandbox import processes_of, remove

        kill(sorted(set(tagged(run_dir, below=True)) | set(processes_of(run_dir))))
        remove(run_dir)
        removed.append(run_dir)
    return removed
