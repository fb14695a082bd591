"""The process the launcher starts: runs the user's script as ``__main__`` under the probe.

Usage (set up by the launcher): ``python -m convcheck.runtime.worker SCRIPT [ARGS...]``, or
``... -m MODULE [ARGS...]`` to run a module as ``python -m MODULE`` does. A worker forked by the
fork server (``forkserver.py``) calls ``main`` with the same arguments.
How the script ended goes to ``exit-<host>-<pid>.json`` in the trace folder, even when the
script crashed before importing torch (and so before any probe existed).
"""

from __future__ import annotations

import os
import runpy
import sys
import traceback
from collections.abc import Callable

from convcheck.runtime import env
from convcheck.runtime import probe as probe_mod


def _user_traceback(exc: BaseException) -> str:
    """The traceback through the user's own frames, plus the innermost frame where it was raised."""
    from convcheck.runtime.locate import is_library_file

    frames = traceback.extract_tb(exc.__traceback__)
    kept = [f for f in frames if not is_library_file(f.filename)]
    if frames and (not kept or kept[-1] is not frames[-1]):
        kept.append(frames[-1])
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(kept)]
    lines.extend(traceback.format_exception_only(type(exc), exc))
    return "".join(lines)


def _run(script: str, module: str | None = None) -> dict:
    try:
        if module is not None:
            # As ``python -m``: the module's package is imported, so its relative imports work,
            # and sys.argv[0] becomes the module's file while it runs.
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(script, run_name="__main__")
    except probe_mod.StopRun:
        return {"status": "stopped-at-budget", "code": 0}
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if code == 0:
            return {"status": "completed", "code": 0}
        return {"status": "crashed", "code": code, "error": f"the script called sys.exit({exc.code!r})"}
    except KeyboardInterrupt:
        return {"status": "interrupted", "code": 130}
    except BaseException as exc:  # the user's error: reported, not raised
        text = _user_traceback(exc)
        sys.stderr.write(text)
        return {"status": "crashed", "code": 1, "error": f"{type(exc).__name__}: {exc}", "traceback": text}
    return {"status": "completed", "code": 0}


def run_entry(script: str, argv: list[str], module: str | None = None,
              before_run: Callable[[], None] | None = None) -> dict:
    """Run the script (or ``module``, as ``python -m``) as ``__main__`` here and record how it ended.

    ``before_run`` is called just before the script's first line, with ``sys.argv`` as the script
    will see it: a forked worker, whose torch is already imported, installs its probe there.
    """
    script = os.path.abspath(script)
    sys.argv = [argv[0] if argv else script, *argv[1:]]
    # `python script.py` puts the script's folder first on sys.path; `python -m` the working folder.
    sys.path[0] = os.getcwd() if module is not None else os.path.dirname(script)
    probe_mod.ENTRY_PID = os.getpid()
    trace_dir = os.environ.get(env.TRACE_DIR)
    if trace_dir:
        probe_mod.register_stack_dump(trace_dir)
        _mark_begun(trace_dir)
    if before_run is not None:
        if module is not None:
            sys.argv[0] = _module_path(module)  # what runpy will set once the module runs
        before_run()

    outcome = _run(script, module)
    probe = probe_mod.active_probe()
    if probe is not None:
        outcome["steps"] = probe.step_count
        if outcome["status"] == "crashed":
            probe.emit("crash", error=outcome.get("error"), traceback=outcome.get("traceback", ""),
                       step=probe.step_count)
        probe.stopping = outcome["status"] == "stopped-at-budget"
        probe.finish(outcome["status"])
    probe_mod.write_exit_record(outcome)
    return outcome


def _module_path(module: str) -> str:
    """The file ``python -m module`` runs (the module name itself when it cannot be found)."""
    from convcheck.modules import ModuleNotRunnable, module_file

    try:
        return str(module_file(module))
    except (ModuleNotRunnable, OSError):
        return module


def _mark_begun(trace_dir: str) -> None:
    """Tell the launcher the script's first line is about to run (a timeout before it is said so)."""
    from convcheck.runtime.trace import process_tag

    try:
        with open(os.path.join(trace_dir, f"begun-{process_tag()}"), "w", encoding="utf-8"):
            pass
    except OSError:
        pass


def leave(code: int) -> None:
    """Stop this process's children and exit without interpreter teardown."""
    probe = probe_mod.active_probe()
    if probe is not None:
        probe.hard_exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def die_with_parent() -> None:
    """Linux: be killed when the launcher dies, even by SIGKILL, so no worker is orphaned."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the launcher died before prctl took effect
        os._exit(1)


def main(before_run: Callable[[], None] | None = None) -> None:
    """Run the script given on the command line, then leave (``before_run``: see ``run_entry``)."""
    die_with_parent()
    if sys.argv[1] == "-m":
        # sys.argv[0] is replaced by the module's file when runpy finds it.
        outcome = run_entry(sys.argv[2], sys.argv[2:], module=sys.argv[2], before_run=before_run)
    else:
        outcome = run_entry(sys.argv[1], sys.argv[1:], before_run=before_run)
    leave(int(outcome["code"]))


if __name__ == "__main__":
    main()
