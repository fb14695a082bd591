"""Point at the user's line: the first stack frame outside torch, convcheck and the stdlib."""

from __future__ import annotations

import os
import sys
import sysconfig
from types import FrameType
from typing import Any

import convcheck

def _library_dirs() -> set[str]:
    """convcheck, the standard library and every site-packages folder (a venv's included)."""
    paths = sysconfig.get_paths()
    dirs = {os.path.dirname(convcheck.__file__), paths["stdlib"], paths["platstdlib"], paths["purelib"],
            paths["platlib"]}
    try:
        import site

        dirs.update(site.getsitepackages())
        dirs.add(site.getusersitepackages())
    except (AttributeError, ImportError):
        pass
    return {d for d in dirs if d}


_SKIP_PREFIXES = tuple(os.path.normcase(os.path.realpath(p)) + os.sep for p in _library_dirs())
_torch_dir: str | None = None


def is_library_file(filename: str) -> bool:
    """True for torch's, convcheck's and the standard library's (and site-packages') files."""
    return _skipped(filename)


def is_torch_file(filename: str) -> bool:
    """True for a file of the torch package itself (not other libraries)."""
    _skipped(filename)  # finds torch's folder once torch is imported
    return bool(_torch_dir) and os.path.normcase(os.path.realpath(filename)).startswith(_torch_dir or "")


def _skipped(filename: str) -> bool:
    global _torch_dir
    if filename.startswith("<"):
        return True
    if _torch_dir is None:
        torch = sys.modules.get("torch")
        if torch is not None and getattr(torch, "__file__", None):
            _torch_dir = os.path.normcase(os.path.dirname(os.path.realpath(torch.__file__))) + os.sep
    path = os.path.normcase(filename)
    if path.startswith(_SKIP_PREFIXES) or (_torch_dir and path.startswith(_torch_dir)):
        return True
    # realpath only for the rare path that is not already absolute and canonical.
    if not os.path.isabs(filename):
        path = os.path.normcase(os.path.realpath(filename))
        return path.startswith(_SKIP_PREFIXES) or bool(_torch_dir and path.startswith(_torch_dir))
    return False


_cache: dict[str, bool] = {}


def caller_frame() -> FrameType | None:
    """The nearest frame outside convcheck: who called a patched function."""
    frame = sys._getframe(1)
    while frame is not None and _is_convcheck_file(frame.f_code.co_filename):
        frame = frame.f_back
    return frame


def caller_file() -> str:
    """The file of the nearest caller outside convcheck."""
    frame = caller_frame()
    return frame.f_code.co_filename if frame is not None else "<unknown>"


def user_location(depth: int = 2) -> tuple[str, int] | None:
    """(file, line) of the innermost caller that is the user's code, or None."""
    frame = sys._getframe(depth)
    while frame is not None:
        filename = frame.f_code.co_filename
        skipped = _cache.get(filename)
        if skipped is None:
            skipped = _cache[filename] = _skipped(filename)
        if not skipped:
            return filename, frame.f_lineno
        frame = frame.f_back
    return None


def event_location(depth: int = 3) -> list[Any] | None:
    """The user's [file, line] as a trace event stores it, or None (``depth`` 2 starts at the caller, 3 above it)."""
    found = user_location(depth)
    return [found[0], found[1]] if found else None


def user_frame(depth: int = 2) -> tuple[str, int, int] | None:
    """(file, line, how many frames lie below it) of the innermost caller that is the user's code.

    The frame count tells a user function that a library called back (HF Trainer's ``compute_loss``,
    Lightning's ``training_step``) from the user's line that started the library (``trainer.train()``).
    """
    found = None
    frame = sys._getframe(depth)
    below = 0
    while frame is not None:
        if found is None:
            filename = frame.f_code.co_filename
            skipped = _cache.get(filename)
            if skipped is None:
                skipped = _cache[filename] = _skipped(filename)
            if not skipped:
                found = (filename, frame.f_lineno)
        else:
            below += 1
        frame = frame.f_back
    return (found[0], found[1], below) if found else None


def called_by_library(depth: int = 2) -> bool:
    """True when the first caller outside torch and convcheck is another library's code, not the user's."""
    frame = sys._getframe(depth)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not (is_torch_file(filename) or _is_convcheck_file(filename)):
            return _skipped(filename)
        frame = frame.f_back
    return False


def called_from_user_code(depth: int = 2) -> bool:
    """True when the first caller outside convcheck and torch's public API is the user's code.

    torch's public wrappers (``torch.cuda.amp.GradScaler`` calling ``torch.amp.GradScaler``, through a
    ``@deprecated`` decorator) pass the user's call on; its private machinery (``torch._inductor``) and
    other libraries act on their own.
    """
    frame = sys._getframe(depth)
    while frame is not None:
        filename = frame.f_code.co_filename
        passing_on = os.path.basename(filename) in _DECORATOR_FILES and _skipped(filename)
        if not (passing_on or _is_convcheck_file(filename) or _is_public_torch_file(filename)):
            skipped = _cache.get(filename)
            if skipped is None:
                skipped = _cache[filename] = _skipped(filename)
            return not skipped
        frame = frame.f_back
    return False


_public_torch_files: dict[str, bool] = {}
#: Where decorators that only wrap a call live (``typing_extensions.deprecated``, ``functools.wraps``).
_DECORATOR_FILES = frozenset({"typing_extensions.py", "warnings.py", "functools.py"})


def _is_public_torch_file(filename: str) -> bool:
    found = _public_torch_files.get(filename)
    if found is None:
        found = is_torch_file(filename)
        if found and _torch_dir:
            inside = os.path.normcase(os.path.realpath(filename))[len(_torch_dir):]
            found = not any(part.startswith("_") and part != "__init__.py" for part in inside.split(os.sep))
        _public_torch_files[filename] = found
    return found


_CONVCHECK_DIR = os.path.normcase(os.path.realpath(os.path.dirname(convcheck.__file__))) + os.sep
_convcheck_files: dict[str, bool] = {}


def _is_convcheck_file(filename: str) -> bool:
    found = _convcheck_files.get(filename)
    if found is None:
        found = _convcheck_files[filename] = os.path.normcase(os.path.realpath(filename)).startswith(_CONVCHECK_DIR)
    return found
