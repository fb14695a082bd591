"""``-m MODULE`` targets: find the module's source file the way ``python -m`` would, without running it.

The static pass, the configuration lookup and the report need the file; the worker then runs
the module itself with ``runpy.run_module``, so relative imports and ``__main__`` behave as
under ``python -m``. Nothing here imports the package: its ``__init__`` may import torch or
have side effects, and the CLI must stay fast.
"""

from __future__ import annotations

import os
import sys
from importlib.machinery import PathFinder, SourceFileLoader
from pathlib import Path


class ModuleNotRunnable(Exception):
    """The name does not lead to a Python source module that ``python -m`` could run."""


def split_module_target(target: str, args: list[str]) -> tuple[str | None, list[str]]:
    """``-m pkg.mod ARGS`` (or ``-mpkg.mod ARGS``) → ("pkg.mod", ARGS); a script path → (None, args)."""
    if target == "-m":
        if not args:
            raise ModuleNotRunnable("-m needs a module name: convcheck run -m package.module [ARGS]...")
        return args[0], args[1:]
    if target.startswith("-m") and len(target) > 2:
        return target[2:], args
    return None, args


def search_path(cwd: str | None = None) -> list[str]:
    """The import path a ``python -m`` started in ``cwd`` sees: the folder first, then this interpreter's."""
    return [cwd or os.getcwd(), *sys.path[1:]]


def module_file(name: str, path: list[str] | None = None) -> Path:
    """The source file ``python -m name`` runs (``name/__main__.py`` for a package), found without importing."""
    parts = name.split(".")
    if not all(part.isidentifier() for part in parts):
        raise ModuleNotRunnable(f"-m {name}: not a module name (dotted Python identifiers, e.g. mypkg.train).")
    locations: list[str] | None = search_path() if path is None else path
    spec = None
    for depth in range(len(parts)):
        qualified = ".".join(parts[: depth + 1])
        spec = PathFinder.find_spec(qualified, locations) if locations is not None else None
        if spec is None:
            raise ModuleNotRunnable(
                f"-m {name}: no module named {qualified!r} in the working folder {os.getcwd()} or on the "
                "import path; run convcheck from the folder you would run `python -m` from."
            )
        locations = list(spec.submodule_search_locations or []) or None
    if locations is not None:  # a package: python -m runs its __main__
        main = PathFinder.find_spec(f"{name}.__main__", locations)
        if main is None:
            raise ModuleNotRunnable(f"-m {name}: {name} is a package with no __main__ module, so it cannot be run.")
        spec = main
    if spec is None or not isinstance(spec.loader, SourceFileLoader) or not spec.origin:
        raise ModuleNotRunnable(f"-m {name}: not a Python source file convcheck can read and run.")
    return Path(spec.origin).resolve()
