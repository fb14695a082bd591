"""How a report shows a path: relative to the working folder when under it, absolute otherwise.

One rule for every path a person reads (finding locations, paths in messages, files the script
changed, crash tracebacks), so that one report never mixes the two spellings of one folder.
"""

from __future__ import annotations

import os
import re
from typing import Any

#: An absolute or ``../`` path inside free text (a traceback's ``File "..."``, a message): ``../`` or a
#: slash that starts a word (not a URL's ``//`` nor the middle of ``a/b``) and names at least one folder
#: (so ``x /2`` stays as it is), up to a quote, space or bracket.
_PATH_IN_TEXT = re.compile(r"(?<![\w/:.~-])(?:\.\./[^\s\"'`()\[\]{},;]+|/[^\s\"'`()\[\]{},;/]+/[^\s\"'`()\[\]{},;]+)")


def display_path(path: str | os.PathLike[str], cwd: str | os.PathLike[str] | None = None) -> str:
    """``path`` as reports show it: relative to ``cwd`` (default: the working folder) when under it, else absolute."""
    text = os.fspath(path)
    if not text or text.startswith("<"):
        return text  # "<stdin>", "<string>": not a file
    base = os.path.abspath(cwd if cwd is not None else os.getcwd())
    absolute = os.path.abspath(os.path.join(base, text))
    for here, there in ((base, absolute), (os.path.realpath(base), os.path.realpath(absolute))):
        if there == here or there.startswith(here.rstrip(os.sep) + os.sep):
            return os.path.relpath(there, here)
    return absolute


def display_loc(loc: Any, cwd: str | os.PathLike[str] | None = None) -> str:
    """``path:line`` of a recorded ``[path, line]`` or a Location (``?`` when unknown), shown by ``display_path``."""
    if hasattr(loc, "path"):
        loc = (loc.path, loc.line)
    if not loc or not loc[0]:
        return "?"
    path = display_path(str(loc[0]), cwd)
    return f"{path}:{loc[1]}" if len(loc) > 1 and loc[1] is not None else path


def display_paths_in(text: str, cwd: str | os.PathLike[str] | None = None) -> str:
    """Free text (a traceback, a message) with each absolute or ``../`` path in it shown by ``display_path``."""
    if "/" not in text:
        return text
    return _PATH_IN_TEXT.sub(lambda match: display_path(match.group(0), cwd), text)
