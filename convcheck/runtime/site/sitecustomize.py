"""Loads convcheck's file guard and probe into every Python process of a run, mp.spawn children included.

It shadows any sitecustomize the user had, so that one is loaded too. torch is
not imported here: the probe installs itself the moment the script imports torch,
so a helper subprocess that never touches torch pays nothing.

This file reaches every process that inherits the run's environment, including
other Python interpreters the script starts and processes that outlive the run. It
must be silent and inert wherever it cannot work (no convcheck to import, the run's
folders already gone) and must never make a process fail.
"""

import importlib.util
import os
import sys


def _load_shadowed_sitecustomize() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        if not entry or os.path.abspath(entry) == here:
            continue
        candidate = os.path.join(entry, "sitecustomize.py")
        if os.path.isfile(candidate):
            spec = importlib.util.spec_from_file_location("_user_sitecustomize", candidate)
            if spec and spec.loader:
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
            return


def _activate_convcheck() -> None:
    trace_dir = os.environ.get("CONVCHECK_TRACE_DIR")
    if not trace_dir or not os.path.isdir(trace_dir):
        return  # not a run, or a process that outlived its run
    try:
        from convcheck.runtime import fsguard
        from convcheck.runtime.bootstrap import activate
    except Exception:
        return  # another interpreter, or one without convcheck installed
    try:
        fsguard.install_from_env()
    except Exception:
        pass
    try:
        activate()
    except Exception:
        pass


try:
    _activate_convcheck()
finally:
    _load_shadowed_sitecustomize()
