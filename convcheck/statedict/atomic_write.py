"""Atomic, verified writing: a ``.partial`` temp file renamed into place only once verified.

SIGTERM and SIGHUP remove the partial file like Ctrl-C does; ``--in-place``
keeps the input as ``FILE.bak`` first.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator

from convcheck.statedict.byte_copy import _copy_whole, _fsync_dir, _same_bytes
from convcheck.statedict.errors import CheckpointError, _human
from convcheck.statedict.results import Verification


class _AtomicFile:
    """A temp file next to ``target``; ``commit`` fsyncs and renames it over ``target``."""

    def __init__(self, target: Path, needed_bytes: int, keep_mode_of: Path | None):
        self.target = target
        self.keep_mode_of = keep_mode_of
        parent = target.parent
        try:
            st = os.statvfs(parent)
            free = st.f_bavail * st.f_frsize
        except OSError:
            free = None
        if free is not None and free < needed_bytes:
            raise CheckpointError(
                f"Not enough free space to write {target}: about {_human(needed_bytes)} is needed and "
                f"{_human(free)} is free in {parent}. Nothing was written.", kind="disk-full",
            )
        try:
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=parent)
        except OSError as exc:
            raise CheckpointError(f"Cannot write the fixed checkpoint to {target}: {exc.strerror or exc}.") from exc
        os.close(fd)
        self.path = Path(name)

    def _mode(self) -> int:
        ref = self.keep_mode_of if self.keep_mode_of is not None else (self.target if self.target.exists() else None)
        if ref is not None:
            return stat.S_IMODE(os.stat(ref).st_mode)
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask

    def commit(self) -> None:
        os.chmod(self.path, self._mode())
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.path, self.target)
        _fsync_dir(self.target.parent)

    def discard(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def write_verified(self, produce: Callable[[Path], Verification]) -> Verification:
        """Let ``produce`` write and verify the temp file; keep it only when verified.

        Any failure leaves no half-written output behind and the target untouched.
        """
        with _signals_interrupt():
            return self._write_verified(produce)

    def _write_verified(self, produce: Callable[[Path], Verification]) -> Verification:
        try:
            verification = produce(self.path)
            if verification.ok:
                self.commit()
            else:
                self.discard()
            return verification
        except CheckpointError:
            self.discard()
            raise
        except BaseException as exc:
            self.discard()
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise _write_error(self.target, exc) from exc


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP interrupt like Ctrl-C while a file is written, so the partial file is removed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {}
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            number = getattr(signal, name)
            previous[number] = signal.signal(number, interrupt)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _write_error(target: Path, exc: BaseException) -> CheckpointError:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return CheckpointError(
            f"The disk is full: writing {target} failed ({exc.strerror or exc}). The partly written file was "
            "removed and the input is unchanged; free some space and run again.", kind="disk-full",
        )
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    free = ""
    try:
        st = os.statvfs(target.parent)
        free = f" ({_human(st.f_bavail * st.f_frsize)} free in {target.parent})"
    except OSError:
        pass
    return CheckpointError(
        f"Writing {target} failed: {detail}{free}. The partly written file was removed and the input is unchanged."
    )


def _make_backup(source: Path) -> Path:
    """``FILE.bak``: a hard link to the input (instant), or a copy where links are not possible."""
    backup = source.with_name(source.name + ".bak")
    if backup.exists():
        if os.path.samefile(backup, source) or _same_bytes(backup, source):
            return backup
        raise CheckpointError(
            f"--in-place needs a backup at {backup}, but that file already exists and differs from {source}. "
            "Move it away (or use --output) and run again; nothing was changed."
        )
    try:
        os.link(source, backup)
    except OSError:
        tmp = _AtomicFile(backup, source.stat().st_size, keep_mode_of=source)
        try:
            _copy_whole(source, tmp.path)
            tmp.commit()
        except CheckpointError:
            tmp.discard()
            raise
        except BaseException as exc:
            tmp.discard()
            raise _write_error(backup, exc) from exc
    _fsync_dir(backup.parent)
    return backup


def _drop_backup(backup: Path | None) -> None:
    if backup is not None:
        try:
            backup.unlink()
        except FileNotFoundError:
            pass
