"""Install the probe in this process the moment it imports torch (or now, if it already has)."""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

from convcheck.runtime import env


class _TorchImportWatcher(importlib.abc.MetaPathFinder):
    """Installs the probe right after ``import torch`` finishes executing."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001, ANN201
        if fullname != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("torch")
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        original_exec = loader.exec_module

        def exec_module(module):  # noqa: ANN001, ANN202
            original_exec(module)
            _torch_imported(module)

        loader.exec_module = exec_module
        return spec


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
    if not os.environ.get(env.TRACE_DIR):
        return
    if "torch" in sys.modules:
        _torch_imported(sys.modules["torch"])
    elif not any(isinstance(f, _TorchImportWatcher) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchImportWatcher())
