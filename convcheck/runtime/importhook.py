"""Run functions right after a module finishes importing, without importing it first."""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from collections.abc import Callable
from typing import Any


class _AfterImport(importlib.abc.MetaPathFinder):
    """Wraps the loader of one module so that its callbacks run, in order, once its body has executed."""

    def __init__(self, fullname: str) -> None:
        self.fullname = fullname
        self.callbacks: list[Callable[[Any], None]] = []

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001, ANN201
        if fullname != self.fullname:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        original_exec = loader.exec_module
        callbacks = self.callbacks

        def exec_module(module):  # noqa: ANN001, ANN202
            original_exec(module)
            for callback in callbacks:
                callback(module)

        loader.exec_module = exec_module
        return spec


def after_import(fullname: str, callback: Callable[[Any], None]) -> None:
    """Call ``callback(module)`` when ``fullname`` has been imported: now if it already is, else right after.

    Several callbacks may wait for one module; a callback already waiting is not added twice.
    """
    module = sys.modules.get(fullname)
    if module is not None:
        callback(module)
        return
    finder = next((f for f in sys.meta_path if isinstance(f, _AfterImport) and f.fullname == fullname), None)
    if finder is None:
        finder = _AfterImport(fullname)
        sys.meta_path.insert(0, finder)
    if callback not in finder.callbacks:
        finder.callbacks.append(callback)
