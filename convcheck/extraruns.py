"""When the checks' extra runs are made: beside the main run, after it, or not at all, and what the report says of them.

A run beside the main one costs no wall time only where it has cores of its own. Where the main run's
processes fill the cores, a run that allows it (``RunVariant.needed``) is made after the main run, and
only if the main run's trace calls for it; it is stopped once what it made settles its check's question
(``RunVariant.settled``).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as Pending
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from convcheck.registry import RunVariant
    from convcheck.runtime.launcher import LaunchResult, LaunchSpec
    from convcheck.runtime.trace import RunTrace

#: How often a run made after the main one is looked at while it runs (seconds).
SETTLED_POLL_S = 0.25


def launch_together(specs: dict[str, LaunchSpec], one_after_another: bool) -> dict[str, LaunchResult]:
    """Launch these runs side by side, or one after the other when they would fight over a port."""
    from convcheck.runtime.launcher import launch_many

    if one_after_another:
        return {label: launch_many({label: spec})[label] for label, spec in specs.items()}
    return launch_many(specs)


def made_later(variants: dict[str, RunVariant], main_processes: int, cores: int) -> set[str]:
    """The extra runs made after the main run, if at all: those that allow it and find no core beside it.

    Beside a main run that fills the cores, every step of another run is training added to the verdict.
    """
    return {label for label, variant in variants.items()
            if variant.needed is not None and main_processes + (variant.nproc_per_node or 1) > cores}


def not_needed(variant: RunVariant, launched: LaunchResult, trace: RunTrace, main_processes: int,
               cores: int) -> str | None:
    """Why an extra run that would be made after the main one is left out; None when it is made."""
    if launched.interrupted:
        return "the main run was interrupted"
    if launched.timed_out:
        # A second run of a script that hangs would wait as long again.
        return "the main run timed out"
    if not trace.trainers:
        return "the main run made no training step to compare with"
    try:
        needed = variant.needed(trace) if variant.needed is not None else True
    except Exception:  # noqa: BLE001 - a check's own failure must not cost the user evidence
        needed = True
    if needed:
        return None
    several = main_processes != 1
    fill = (f"the main run's {main_processes} process{'es fill' if several else ' fills'} the {cores} "
            f"core{'s' if cores != 1 else ''}")
    return f"{fill}, and {variant.left_out or 'the main run did not call for it'}"


def launch_after(spec: LaunchSpec, variant: RunVariant, main_trace: RunTrace) -> tuple[LaunchResult, bool]:
    """Make an extra run after the main one; stop it as soon as what it made settles its check's question.

    Returns the launch's result and whether it was stopped for that.
    """
    from convcheck.runtime.launcher import launch
    from convcheck.runtime.trace import read_trace_dir

    if variant.settled is None:
        return launch(spec), False
    cancel = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(launch, spec, cancel)
        try:
            while True:
                try:
                    return future.result(timeout=SETTLED_POLL_S), False
                except Pending:
                    pass
                so_far = read_trace_dir(spec.run_dir / "trace", world_size=variant.nproc_per_node or 1)
                try:
                    settled = variant.settled(main_trace, so_far)
                except Exception:  # noqa: BLE001 - a check's own failure: let the run make its budget
                    settled = False
                if settled:
                    cancel.set()
                    return future.result(), True
        except KeyboardInterrupt:
            cancel.set()
            return future.result(), False


def report_rows(variants: dict[str, RunVariant], asked_by: dict[str, str], trace: RunTrace, later: set[str],
                left_out: dict[str, str], settled_early: set[str]) -> list[dict[str, Any]]:
    """One row per extra run for the report: which check asked, its size, when it ran, or why not."""
    rows = []
    for label, variant in variants.items():
        ran = trace.variants.get(label)
        row: dict[str, Any] = {
            "label": label, "check": asked_by[label], "processes": variant.nproc_per_node or 1, "steps": variant.steps,
            "steps_made": max((p.steps for p in ran.trainers), default=0) if ran else 0,
            "when": "left-out" if label in left_out else "after" if label in later else "beside",
        }
        if label in left_out:
            row["why"] = left_out[label]
        if label in settled_early:
            row["stopped_early"] = True  # what it had made already answered the check
        rows.append(row)
    return rows
