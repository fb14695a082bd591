"""Loads convcheck's probe into every Python process of a run, including mp.spawn children.

It shadows any sitecustomize the user had, so that one is loaded too. torch is
not imported here: the probe installs itself the moment the script imports torch,
so a helper subprocess that never touches torch pays nothing.
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


try:
    _load_shadowed_sitecustomize()
finally:
    if os.environ.get("CONVCHECK_TRACE_DIR"):
        from convcheck.runtime.bootstrap import activate

        activate()
