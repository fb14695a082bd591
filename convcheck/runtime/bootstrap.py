"""Install the probe in this process the moment it imports torch (or now, if it already has)."""

from __future__ import annotations

import os

from convcheck.runtime import env
from convcheck.runtime.importhook import after_import


def _torch_imported(torch) -> None:  # noqa: ANN001
    """torch just finished importing: guard its native file writers, then install the probe."""
    from convcheck.runtime import fsguard

    try:
        fsguard.guard_torch(torch)
    except Exception:
        pass
    if not os.path.isdir(os.environ.get(env.TRACE_DIR) or ""):
        return  # a process that outlived its run: its trace folder is gone
    from convcheck.runtime.probe import install_from_env

    install_from_env()


def activate() -> None:
    """Arrange for the probe when the run's environment asks for it; torch is not imported here."""
    if not os.environ.get(env.TRACE_DIR) or os.environ.get(env.FORKSERVER):
        return  # not a run, or a fork server: each worker forked from it installs its own probe
    after_import("torch", _torch_imported)
