"""Loads convcheck's probe into every Python process of a run, including mp.spawn children.

It shadows any sitecustomize the user had, so that one is loaded too. torch is
not imported here: the probe installs itself the moment the script imports torch,
so a helper subprocess that never touches torch pays nothing.
"""

import importlib.abc
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
            from convcheck.runtime.probe import install_from_env

            install_from_env()

        loader.exec_module = exec_module
        return spec


def _activate() -> None:
    if not os.environ.get("CONVCHECK_TRACE_DIR"):
        return
    if "torch" in sys.modules:
        from convcheck.runtime.probe import install_from_env

        install_from_env()
    else:
        sys.meta_path.insert(0, _TorchImportWatcher())


try:
    _load_shadowed_sitecustomize()
finally:
    _activate()
