"""Where a report goes: standard output, a file, or a device or pipe that must not be truncated.

``--output /dev/stdout`` is the file the caller redirected standard output to: opening it for
writing would truncate that file and lose what was written before convcheck ran. Streams are
written through the descriptor convcheck already holds, devices and pipes are opened without
truncation, and only regular files are replaced.
"""

from __future__ import annotations

import os
import re
import stat
import sys
from pathlib import Path

#: The file each format gets in an output folder: no two formats share a name.
FILE_NAMES = {
    "text": "convcheck.txt",
    "json": "convcheck.json",
    "sarif": "convcheck.sarif",
    "junit": "convcheck.xml",
    "github": "convcheck.github.txt",
}

_NAMED_STREAMS = {"-": 1, "/dev/stdout": 1, "/dev/stderr": 2}
_FD_PATH = re.compile(r"/(?:dev/fd|proc/self/fd)/(\d+)")


def stream_fd(path: Path | None) -> int | None:
    """The open descriptor ``path`` names (``-`` and ``/dev/stdout`` are 1), or None for a real path."""
    if path is None:
        return 1
    text = str(path)
    if text in _NAMED_STREAMS:
        return _NAMED_STREAMS[text]
    match = _FD_PATH.fullmatch(text)
    return int(match.group(1)) if match else None


def is_stdout(path: Path | None) -> bool:
    """Whether the report goes to standard output."""
    return stream_fd(path) == 1


def identity(path: Path | None) -> tuple:
    """What two destinations that end in the same file have in common."""
    fd = stream_fd(path)
    if fd is not None:
        return ("fd", fd)
    assert path is not None
    try:
        info = path.stat()
    except OSError:
        return ("path", str(path.resolve()))
    return ("file", info.st_dev, info.st_ino)


def describe(path: Path | None) -> str:
    """The destination as the user wrote it (standard output as ``-``)."""
    return "-" if path is None else str(path)


def write_text(path: Path | None, text: str) -> None:
    """Write ``text`` to the destination without destroying anything that is not a regular file."""
    fd = stream_fd(path)
    if fd is not None:
        stream = {1: sys.stdout, 2: sys.stderr}.get(fd)
        if stream is not None:
            stream.write(text)
            stream.flush()
            return
        data = text.encode("utf-8")
        while data:
            data = data[os.write(fd, data):]
        return
    assert path is not None
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        with open(path, "a", encoding="utf-8") as handle:  # append: no O_TRUNC on a device or pipe
            handle.write(text)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
