"""A copy-on-write view of the filesystem for every Python process of a run.

The user's files must come out of a diagnostic run byte for byte as they went in,
whatever API the script writes through. Every write, append, truncate, rename,
delete or mkdir of a path outside the run's own folders lands in the run's scratch
folder instead, keyed by the path's absolute name (so every rank and child of the
run agrees on it); a later read of that path, in any process of the run, reads the
scratch copy; a deletion is recorded as a marker and later existence checks obey
it. Each such change is journalled in the trace folder for the report.

This is a Python-level guard: it patches builtins/io ``open``, the ``os`` functions
that create, change or remove paths (``pathlib``, ``shutil``, ``logging``, numpy and
TensorBoard go through them), ``shutil.rmtree``, and the Python entry points of
native writers (torch's zip writer, ``torch.jit.save``/``load``, safetensors). Code
that writes through C without passing a path through Python is not seen.

Left alone (passed through): the run's own trace and scratch folders; ``/dev``,
``/proc``, ``/sys``; anything that is not a regular file or folder (pipes, sockets,
devices); the user cache folder (``$XDG_CACHE_HOME`` or ``~/.cache``: compiler and
download caches); and paths the run itself creates in the system temp folder
(``tempfile.gettempdir()``) — a path that already existed there before the run is
guarded like any other.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import shutil
import stat as stat_mod
import sys
import threading
from collections.abc import Callable
from typing import Any

#: Environment variables the guard reads (set by the launcher for every process of a run).
SCRATCH_ENV = "CONVCHECK_SCRATCH_DIR"
TRACE_ENV = "CONVCHECK_TRACE_DIR"

#: The level of protection this module gives, as the report words it.
LEVEL = "python"

_FILES = "files"
_GONE = "gone"
_OWN = "own"
_MARK_GONE = ".convcheck-deleted"
_MARK_OWN = ".convcheck-run-created"
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

# Originals, taken once: the guard's own work must never go through its wrappers.
_open = builtins.open
_os_open = os.open
_stat = os.stat
_lstat = os.lstat
_listdir = os.listdir
_scandir = os.scandir
_mkdir = os.mkdir
_unlink = os.unlink
_rmdir = os.rmdir
_rename = os.rename
_replace = os.replace
_access = os.access
_rmtree = shutil.rmtree

_guard: Guard | None = None
_local = threading.local()


def _exists(path: str) -> bool:
    try:
        _lstat(path)
        return True
    except OSError:
        return False


def _isdir(path: str) -> bool:
    try:
        return stat_mod.S_ISDIR(_stat(path).st_mode)
    except OSError:
        return False


def _makedirs(path: str) -> None:
    if _isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        _makedirs(parent)
    try:
        _mkdir(path)
    except FileExistsError:
        pass


def _copy_any(src: str, dst: str) -> None:
    """Copy a file (contents and mode) or a folder tree with the original functions only."""
    if _isdir(src):
        _makedirs(dst)
        for name in _listdir(src):
            _copy_any(os.path.join(src, name), os.path.join(dst, name))
        return
    _makedirs(os.path.dirname(dst))
    tmp = f"{dst}.convcheck-{os.getpid()}-{threading.get_ident()}"
    with _open(src, "rb") as fin, _open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout)
    os.chmod(tmp, stat_mod.S_IMODE(_stat(src).st_mode))
    try:
        os.link(tmp, dst)  # never replaces a copy another process made first
    except FileExistsError:
        pass
    finally:
        _unlink(tmp)


class Guard:
    """The run's view: which paths are guarded, where their copies live, what was deleted."""

    def __init__(self, scratch_dir: str, trace_dir: str | None, passthrough: list[str], temp_dirs: list[str]) -> None:
        self.root = os.path.abspath(scratch_dir)
        self.files = os.path.join(self.root, _FILES)
        self.gone = os.path.join(self.root, _GONE)
        self.own = os.path.join(self.root, _OWN)
        self.trace_dir = trace_dir
        self.passthrough = tuple(_prefix(p) for p in passthrough if p)
        self.temp_dirs = tuple(_prefix(p) for p in temp_dirs if p)
        self.journalled: set[tuple[str, str]] = set()
        # Reads of Python's own files (every import stats hundreds) skip the view: writes there
        # are still guarded, but a script that rewrites a file of its Python installation reads
        # the original back.
        libraries = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
        libraries.update(p for p in sys.path if p.endswith(("site-packages", "dist-packages")))
        self.read_through = self.passthrough + tuple(
            {os.path.join(p, "") for p in libraries if p} | {_prefix(p) for p in libraries if p})
        self._stores_seen = False

    # -- classifying ---------------------------------------------------------------

    def key(self, path: Any) -> str:
        """The absolute, symlink-resolved name every process of the run uses for ``path``."""
        return os.path.realpath(os.fspath(path))

    def guarded(self, key: str) -> bool:
        """Is this (absolute) path one of the user's, to be kept untouched?"""
        probe = key + os.sep
        if probe.startswith(self.passthrough):
            return False
        if probe.startswith(self.temp_dirs) and self._run_owns(key):
            return False
        try:
            mode = _stat(key).st_mode
        except OSError:
            return True
        return stat_mod.S_ISREG(mode) or stat_mod.S_ISDIR(mode)

    def _run_owns(self, key: str) -> bool:
        """A temp path is the run's when the run created it, or a folder above it, in the temp folder itself."""
        if self._marked(self.own, _MARK_OWN, key):
            return True
        # New, directly in the temp folder (mkstemp, mkdtemp): the run's. An existing path, or a new
        # one inside someone else's folder there (a project checked out under /tmp), is guarded.
        return (os.path.dirname(key) + os.sep in self.temp_dirs and not _exists(key)
                and not _exists(self.upper(key)))

    def adopt(self, key: str) -> None:
        """Remember that the run created this temp path (the marker is shared by every process)."""
        if os.path.dirname(key) + os.sep in self.temp_dirs and not self._marked(self.own, _MARK_OWN, key):
            marker = os.path.join(self.own + key, _MARK_OWN)
            _makedirs(os.path.dirname(marker))
            _open(marker, "wb").close()

    # -- the layers ------------------------------------------------------------------

    def upper(self, key: str) -> str:
        """Where the run's copy of ``key`` lives."""
        return self.files + key

    def _marked(self, store: str, mark: str, key: str) -> bool:
        if not _exists(store):
            return False
        current = key
        while True:
            if _exists(os.path.join(store + current, mark)):
                return True
            parent = os.path.dirname(current)
            if parent == current:
                return False
            current = parent

    def deleted(self, key: str) -> bool:
        """Was ``key`` (or a folder above it) deleted during the run, with no new copy since?"""
        if _exists(self.upper(key)):
            return False
        return self._marked(self.gone, _MARK_GONE, key)

    def in_view(self, key: str) -> bool:
        """Does ``key`` exist as the run sees it?"""
        if _exists(self.upper(key)):
            return True
        return _exists(key) and not self._marked(self.gone, _MARK_GONE, key)

    def read_path(self, path: Any) -> str:
        """The path to read for ``path``: the run's copy, the original, or a missing name if deleted."""
        name = os.fspath(path)
        absolute = name if name.startswith(os.sep) else os.path.abspath(name)
        if (absolute + os.sep).startswith(self.read_through):
            return name
        if not self._stores_seen:
            if not _exists(self.files) and not _exists(self.gone):
                return name  # nothing written or deleted yet: the cheap common case
            self._stores_seen = True  # they stay until the run ends
        key = self.key(path)
        if (key + os.sep).startswith(self.passthrough):
            return os.fspath(path)
        upper = self.upper(key)
        if _exists(upper):
            return upper
        if self._marked(self.gone, _MARK_GONE, key):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), os.fspath(path))
        return os.fspath(path)

    def write_path(self, path: Any, op: str = "write", keep: bool = False, exclusive: bool = False) -> str:
        """Where a write to ``path`` goes; with ``keep`` the current contents are copied there first."""
        key = self.key(path)
        if not self.guarded(key):
            if not _exists(key):
                self.adopt(key)
            return os.fspath(path)
        upper = self.upper(key)
        present = self.in_view(key)
        if exclusive and present:
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(path))
        if not self.in_view(os.path.dirname(key)):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), os.fspath(path))
        if present and _isdir(upper if _exists(upper) else key):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
        _makedirs(os.path.dirname(upper))
        if keep and present and not _exists(upper):
            _copy_any(key, upper)
        # A path that was not there before the run is the run's creation, however it was written.
        self.journal(op if _exists(key) or op == "rename" else "create", key, upper)
        return upper

    def unlink_key(self, path: Any) -> str:
        """The key of a name to unlink: its folder resolved, its last part (maybe a link) kept."""
        name = os.fspath(path)
        return os.path.join(self.key(os.path.dirname(name) or "."), os.path.basename(name))

    def remove(self, path: Any, op: str, folder: bool | None) -> None:
        """Delete ``path`` in the run's view; ``folder``: True for rmdir, False for unlink, None for a tree."""
        key = self.unlink_key(path) if folder is False else self.key(path)
        name = os.fspath(path)
        if not self.in_view(key):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)
        upper = self.upper(key)
        is_dir = _isdir(upper) if _exists(upper) else _isdir(key)
        if folder is False and is_dir:
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), name)
        if folder is True:
            if not is_dir:
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), name)
            if self.listdir(key):
                raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY), name)
        if _exists(upper):
            if _isdir(upper) and not os.path.islink(upper):
                _rmtree(upper)
            else:
                _unlink(upper)
        if _exists(key):
            marker = os.path.join(self.gone + key, _MARK_GONE)
            _makedirs(os.path.dirname(marker))
            _open(marker, "wb").close()
        self.journal(op, key, None)

    def listdir(self, key: str) -> list[str]:
        """A folder's names as the run sees them: originals not deleted, plus the run's copies."""
        names: list[str] = []
        if _isdir(key) and not self._marked(self.gone, _MARK_GONE, key):
            names = [n for n in _listdir(key) if not self.deleted(os.path.join(key, n))]
        upper = self.upper(key)
        if _isdir(upper):
            names += [n for n in _listdir(upper) if n not in names and not n.startswith(".convcheck-")
                      and ".convcheck-" not in n]
        return names

    def rename(self, src: Any, dst: Any, op: str) -> None:
        """Move ``src`` to ``dst`` in the run's view; neither original is changed."""
        src_key, dst_key = self.key(src), self.key(dst)
        src_guarded, dst_guarded = self.guarded(src_key), self.guarded(dst_key)
        source = self.read_path(src) if src_guarded else os.fspath(src)
        if not _exists(source):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), os.fspath(src))
        target = self.write_path(dst, op) if dst_guarded else os.fspath(dst)
        if _exists(target) and _isdir(target) and not _isdir(source):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(dst))
        if not src_guarded or source == self.upper(src_key):
            # The run's own file (a temp file or a copy): move it; the original of src stays as it was.
            try:
                _replace(source, target)
            except OSError:
                _copy_any(source, target)
                _rmtree(source) if _isdir(source) else _unlink(source)
        else:
            if _exists(target) and _isdir(target):
                _rmtree(target)
            elif _exists(target):
                _unlink(target)
            _copy_any(source, target)
        if src_guarded and _exists(src_key):
            marker = os.path.join(self.gone + src_key, _MARK_GONE)
            _makedirs(os.path.dirname(marker))
            _open(marker, "wb").close()
            self.journal("rename-from", src_key, target if dst_guarded else os.fspath(dst))

    def mkdir(self, path: Any) -> None:
        """Create a folder in the run's view."""
        key = self.key(path)
        if self.in_view(key):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(path))
        if not self.in_view(os.path.dirname(key)):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), os.fspath(path))
        _makedirs(self.upper(key))
        self.journal("mkdir", key, self.upper(key))

    # -- the journal -----------------------------------------------------------------

    def journal(self, op: str, key: str, to: str | None) -> None:
        """Record one change for the report (once per operation and path in each process)."""
        if not self.trace_dir or (op, key) in self.journalled:
            return
        self.journalled.add((op, key))
        loc = None
        try:
            from convcheck.runtime.locate import user_location

            found = user_location(1)
            loc = [found[0], found[1]] if found else None
        except Exception:
            pass
        import socket

        record = json.dumps({"op": op, "path": key, "to": to, "loc": loc, "pid": os.getpid()}) + "\n"
        name = os.path.join(self.trace_dir, f"files-{socket.gethostname()}-{os.getpid()}.jsonl")
        try:
            fd = _os_open(name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, record.encode())
            finally:
                os.close(fd)
        except OSError:
            pass


def _prefix(path: str) -> str:
    return os.path.join(os.path.realpath(path), "")


# -- the wrappers -----------------------------------------------------------------------


def _active() -> Guard | None:
    """The guard, unless this thread is already inside it (its own calls go to the originals)."""
    if _guard is None or getattr(_local, "busy", False):
        return None
    return _guard


class _Busy:
    def __enter__(self) -> None:
        _local.busy = True

    def __exit__(self, *exc: object) -> None:
        _local.busy = False


def _is_path(value: Any) -> bool:
    return isinstance(value, (str, bytes, os.PathLike)) and not isinstance(value, bool)


def _text(value: Any) -> Any:
    value = os.fspath(value)
    return os.fsdecode(value) if isinstance(value, bytes) else value


def _open_mode_wants(mode: str) -> tuple[bool, bool, bool]:
    """(writes, keeps the current contents, exclusive) for an ``open()`` mode string."""
    writes = any(c in mode for c in "wax+")
    keep = ("a" in mode) or ("+" in mode and "w" not in mode)
    return writes, keep, "x" in mode


def _wrap_open(original: Callable[..., Any]) -> Callable[..., Any]:
    def open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:  # noqa: A001
        guard = _active()
        if guard is None or not _is_path(file) or kwargs.get("opener") is not None or len(args) >= 6:
            # With an opener the path goes to it (tempfile: os.open with O_TMPFILE): os.open is guarded.
            return original(file, mode, *args, **kwargs)
        with _Busy():
            writes, keep, exclusive = _open_mode_wants(mode if isinstance(mode, str) else "r")
            op = "append" if "a" in mode else ("update" if keep else "write")
            target = (guard.write_path(_text(file), op, keep, exclusive) if writes
                      else guard.read_path(_text(file)))
        return original(target, mode, *args, **kwargs)

    return open


def _wrap_os_open(original: Callable[..., Any]) -> Callable[..., Any]:
    def os_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        guard = _active()
        if guard is None or not _is_path(path):
            return original(path, flags, mode, dir_fd=dir_fd)
        with _Busy():
            name = _text(path)
            if dir_fd is not None and not os.path.isabs(name):
                name = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), name)
            if flags & getattr(os, "O_TMPFILE", 0) == getattr(os, "O_TMPFILE", -1):
                # An unnamed file in a folder (tempfile.TemporaryFile): no name changes anywhere.
                return original(path, flags, mode, dir_fd=dir_fd)
            if flags & _WRITE_FLAGS:
                keep = not flags & os.O_TRUNC and bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND))
                exclusive = bool(flags & os.O_EXCL and flags & os.O_CREAT)
                op = "append" if flags & os.O_APPEND else ("update" if keep else "write")
                target = guard.write_path(name, op, keep, exclusive)
            else:
                target = guard.read_path(name)
        return original(target, flags, mode)

    return os_open


def _wrap_reader(original: Callable[..., Any]) -> Callable[..., Any]:
    """stat/lstat/access/listdir-like functions whose first argument is a path that is read."""

    def reader(path: Any = None, *args: Any, **kwargs: Any) -> Any:
        guard = _active()
        if guard is None or not _is_path(path) or kwargs.get("dir_fd") is not None:
            return original(*(() if path is None else (path,)), *args, **kwargs)
        with _Busy():
            target = guard.read_path(_text(path))
        if isinstance(path, bytes):
            target = os.fsencode(target)
        return original(target, *args, **kwargs)

    return reader


def _wrap_listdir(original: Callable[..., Any]) -> Callable[..., Any]:
    def listdir(path: Any = ".") -> list[Any]:
        guard = _active()
        if guard is None or not _is_path(path):
            return original(path)
        with _Busy():
            key = guard.key(_text(path))
            if not guard.guarded(key) or not _exists(guard.root):
                return original(path)
            if not guard.in_view(key):
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), _text(path))
            names = guard.listdir(key)
        return [os.fsencode(n) for n in names] if isinstance(path, bytes) else names

    return listdir


class _MergedScandir:
    """``os.scandir`` over the run's view: the run's copies, then originals not deleted or copied."""

    def __init__(self, guard: Guard, key: str) -> None:
        self._guard, self._key = guard, key
        self._sources: list[tuple[Any, bool]] = []
        self._seen: set[str] = set()
        upper = guard.upper(key)
        if _isdir(upper):
            self._sources.append((_scandir(upper), True))
        if _isdir(key) and not guard._marked(guard.gone, _MARK_GONE, key):
            self._sources.append((_scandir(key), False))

    def __iter__(self) -> _MergedScandir:
        return self

    def __next__(self) -> Any:
        while self._sources:
            entries, is_upper = self._sources[0]
            for entry in entries:
                if entry.name in self._seen or ".convcheck-" in entry.name:
                    continue
                if not is_upper:
                    with _Busy():
                        if self._guard.deleted(os.path.join(self._key, entry.name)):
                            continue
                self._seen.add(entry.name)
                return entry
            self._sources.pop(0)[0].close()
        raise StopIteration

    def close(self) -> None:
        """Close both underlying iterators."""
        while self._sources:
            self._sources.pop()[0].close()

    def __enter__(self) -> _MergedScandir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _wrap_scandir(original: Callable[..., Any]) -> Callable[..., Any]:
    def scandir(path: Any = ".") -> Any:
        guard = _active()
        if guard is None or not _is_path(path) or isinstance(path, bytes):
            return original(path)
        with _Busy():
            key = guard.key(path)
            if not guard.guarded(key) or not _exists(guard.root):
                return original(path)
            if not guard.in_view(key):
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), _text(path))
            if not _exists(guard.upper(key)) and not _exists(guard.gone):
                return original(path)
            return _MergedScandir(guard, key)

    return scandir


def _wrap_remove(original: Callable[..., Any], folder: bool) -> Callable[..., Any]:
    def remove(path: Any, *, dir_fd: int | None = None) -> None:
        guard = _active()
        if guard is None or not _is_path(path) or dir_fd is not None:
            return original(path, dir_fd=dir_fd)
        with _Busy():
            name = _text(path)
            key = guard.key(name) if folder else guard.unlink_key(name)
            if not guard.guarded(key):
                return original(path)
            guard.remove(name, "rmdir" if folder else "delete", folder)
        return None

    return remove


def _wrap_rename(original: Callable[..., Any], op: str) -> Callable[..., Any]:
    def rename(src: Any, dst: Any, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None) -> None:
        guard = _active()
        if guard is None or not (_is_path(src) and _is_path(dst)) or src_dir_fd is not None or dst_dir_fd is not None:
            return original(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        with _Busy():
            s, d = _text(src), _text(dst)
            if not guard.guarded(guard.key(s)) and not guard.guarded(guard.key(d)):
                if not _exists(guard.key(d)):
                    guard.adopt(guard.key(d))
                return original(src, dst)
            guard.rename(s, d, op)
        return None

    return rename


def _wrap_mkdir(original: Callable[..., Any]) -> Callable[..., Any]:
    def mkdir(path: Any, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        guard = _active()
        if guard is None or not _is_path(path) or dir_fd is not None:
            return original(path, mode, dir_fd=dir_fd)
        with _Busy():
            key = guard.key(_text(path))
            if not guard.guarded(key):
                original(path, mode)
                if _exists(key):
                    guard.adopt(key)
                return None
            guard.mkdir(_text(path))
        return None

    return mkdir


def _wrap_changer(original: Callable[..., Any], op: str) -> Callable[..., Any]:
    """truncate/chmod/utime/chown: change the run's copy (made first) instead of the original."""

    def change(path: Any, *args: Any, **kwargs: Any) -> Any:
        guard = _active()
        if guard is None or not _is_path(path) or kwargs.get("dir_fd") is not None:
            return original(path, *args, **kwargs)
        with _Busy():
            key = guard.key(_text(path))
            if not guard.guarded(key):
                return original(path, *args, **kwargs)
            if not guard.in_view(key):
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), _text(path))
            upper = guard.upper(key)
            if not _exists(upper):
                _copy_any(key, upper)
            if _exists(key):  # a change to a file the run created is no change to the user's
                guard.journal(op, key, upper)
        return original(upper, *args, **kwargs)

    return change


def _wrap_rmtree(original: Callable[..., Any]) -> Callable[..., Any]:
    def rmtree(path: Any, ignore_errors: bool = False, onerror: Any = None, **kwargs: Any) -> None:
        guard = _active()
        if guard is None or not _is_path(path) or kwargs.get("dir_fd") is not None:
            return original(path, ignore_errors, onerror, **kwargs)
        with _Busy():
            key = guard.key(_text(path))
            if not guard.guarded(key):
                return original(path, ignore_errors, onerror, **kwargs)
            try:
                if guard.in_view(key) and not _isdir(guard.upper(key) if _exists(guard.upper(key)) else key):
                    raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), _text(path))
                guard.remove(_text(path), "delete-tree", None)
            except OSError:
                if ignore_errors:
                    return None
                if onerror is not None:
                    onerror(os.rmdir, path, sys.exc_info())
                    return None
                raise
        return None

    rmtree.avoids_symlink_attacks = getattr(original, "avoids_symlink_attacks", False)  # type: ignore[attr-defined]
    return rmtree


def _wrap_native_writer(original: Any, index: int = 0) -> Callable[..., Any]:
    """A native writer that takes a path (torch's zip writer, safetensors): point it at the run's copy."""

    def writer(*args: Any, **kwargs: Any) -> Any:
        guard = _active()
        if guard is not None and len(args) > index and _is_path(args[index]) and not isinstance(args[index], bytes):
            with _Busy():
                args = (*args[:index], guard.write_path(_text(args[index])), *args[index + 1:])
        return original(*args, **kwargs)

    return writer


def _wrap_native_reader(original: Any, index: int = 0) -> Callable[..., Any]:
    """A native reader that takes a path: read the run's copy where there is one."""

    def reader(*args: Any, **kwargs: Any) -> Any:
        guard = _active()
        if guard is not None and len(args) > index and _is_path(args[index]) and not isinstance(args[index], bytes):
            with _Busy():
                args = (*args[:index], guard.read_path(_text(args[index])), *args[index + 1:])
        return original(*args, **kwargs)

    return reader


def _set(owner: Any, name: str, wrap: Callable[[Any], Any]) -> None:
    original = getattr(owner, name, None)
    if original is None or getattr(original, "_convcheck_guard", False):
        return
    wrapper = wrap(original)
    wrapper._convcheck_guard = True  # type: ignore[attr-defined]
    wrapper.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(owner, name, wrapper)


def _patch_python() -> None:
    _set(builtins, "open", _wrap_open)
    io.open = builtins.open  # the same function under both names, as in CPython
    _set(os, "open", _wrap_os_open)
    for name in ("stat", "lstat", "access"):
        _set(os, name, _wrap_reader)
    _set(os, "listdir", _wrap_listdir)
    _set(os, "scandir", _wrap_scandir)
    _set(os, "remove", lambda o: _wrap_remove(o, folder=False))
    _set(os, "unlink", lambda o: _wrap_remove(o, folder=False))
    _set(os, "rmdir", lambda o: _wrap_remove(o, folder=True))
    _set(os, "rename", lambda o: _wrap_rename(o, "rename"))
    _set(os, "replace", lambda o: _wrap_rename(o, "rename"))
    _set(os, "mkdir", _wrap_mkdir)
    for name in ("truncate", "chmod", "utime", "chown"):
        _set(os, name, lambda o, op=name: _wrap_changer(o, op))
    _set(shutil, "rmtree", _wrap_rmtree)
    # logging.FileHandler captured ``open`` when logging was imported; point it at the guarded one.
    logging = sys.modules.get("logging")
    if logging is not None and hasattr(logging, "FileHandler"):
        logging.FileHandler._builtin_open = builtins.open  # type: ignore[attr-defined]


def guard_torch(torch: Any) -> None:
    """torch's native writers take paths: point them at the run's copies (torch.save, torch.jit)."""
    if _guard is None:
        return
    # torch.save with a path hands the path to a C++ zip writer, past builtins.open;
    # torch.jit hands its paths to C++ readers and writers. (torch.load(mmap=True) is
    # redirected by the probe's torch.load wrapper, through redirect_read.)
    _set(torch._C, "PyTorchFileWriter", _wrap_native_writer)
    _set(torch._C, "PyTorchFileReader", _wrap_native_reader)
    try:
        import torch.jit

        _set(torch.jit, "load", _wrap_native_reader)
        script_module = getattr(torch.jit, "RecursiveScriptModule", None)
        if script_module is not None:  # torch.jit.save(m, path) calls m.save(path)
            _set(script_module, "save", lambda o: _wrap_native_writer(o, 1))
    except Exception:
        pass


def _guard_safetensors(module: Any) -> None:
    """safetensors writes and reads in Rust: redirect the path at its Python entry points."""
    _set(module, "serialize_file", lambda o: _wrap_native_writer(o, 1))
    _set(module, "safe_open", _wrap_native_reader)


_AFTER_IMPORT: dict[str, Callable[[Any], None]] = {"safetensors": _guard_safetensors}


class _ImportWatcher:
    """Patches a module's native path entry points right after it is imported."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        hook = _AFTER_IMPORT.get(fullname)
        if hook is None:
            return None
        import importlib.util

        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        original_exec = loader.exec_module

        def exec_module(module: Any) -> None:
            original_exec(module)
            try:
                hook(module)
            except Exception:
                pass

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install(scratch_dir: str, trace_dir: str | None) -> Guard | None:
    """Install the guard in this process (idempotent)."""
    global _guard
    if _guard is not None:
        return _guard
    import tempfile

    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    run_dirs = [scratch_dir, trace_dir or "", os.path.dirname(os.path.abspath(scratch_dir))]
    _guard = Guard(
        scratch_dir, trace_dir, passthrough=[*run_dirs, "/dev", "/proc", "/sys", cache],
        temp_dirs=[tempfile.gettempdir()],
    )
    _patch_python()
    for name, hook in _AFTER_IMPORT.items():
        if name in sys.modules:
            hook(sys.modules[name])
    if not any(isinstance(finder, _ImportWatcher) for finder in sys.meta_path):
        sys.meta_path.insert(0, _ImportWatcher())
    if "torch" in sys.modules:
        guard_torch(sys.modules["torch"])
    return _guard


def install_from_env() -> Guard | None:
    """Install the guard when this process belongs to a run whose scratch folder still exists."""
    scratch = os.environ.get(SCRATCH_ENV)
    if not scratch or not os.path.isdir(scratch):
        return None
    return install(scratch, os.environ.get(TRACE_ENV) or None)


def retarget_from_env() -> Guard | None:
    """In a worker forked from a fork server: guard for this worker's run, whose folders may not be the server's."""
    global _guard
    scratch = os.environ.get(SCRATCH_ENV)
    if _guard is not None and scratch and os.path.abspath(scratch) != _guard.root:
        _guard = None  # the patches stay: they look the guard up at each call
    return install_from_env()


def redirect_write(path: Any) -> str | None:
    """Where a native writer should write ``path`` instead (None: write it where it is)."""
    if _guard is None or not _is_path(path) or isinstance(path, bytes):
        return None
    with _Busy():
        target = _guard.write_path(_text(path))
    return None if target == os.fspath(path) else target


def redirect_read(path: Any) -> str | None:
    """The run's copy of ``path`` to read instead (None: read it where it is)."""
    if _guard is None or not _is_path(path) or isinstance(path, bytes):
        return None
    with _Busy():
        target = _guard.read_path(_text(path))
    return None if target == os.fspath(path) else target


def original_path(name: str) -> str | None:
    """The user's path whose run copy is ``name`` (a file object opened through the guard), or None."""
    if _guard is None or not isinstance(name, str):
        return None
    prefix = _guard.files
    return name[len(prefix):] if name.startswith(prefix + os.sep) else None


def uninstall() -> None:
    """Stop guarding in this process (the wrappers stay and pass every call through)."""
    global _guard
    _guard = None


def active() -> Guard | None:
    """This process's guard, if the run installed one."""
    return _guard


#: How the report words each journalled operation.
OP_WORDS = {
    "create": "created", "write": "overwritten", "append": "appended to", "update": "changed in place",
    "delete": "deleted", "delete-tree": "deleted (folder)", "rmdir": "deleted (folder)", "mkdir": "created (folder)",
    "rename": "renamed onto", "rename-from": "renamed away", "truncate": "truncated", "chmod": "mode changed",
    "utime": "times changed", "chown": "owner changed",
}


def read_journal(trace_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every change the run's processes journalled, once per operation and path, in order."""
    from pathlib import Path

    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(Path(trace_dir).glob("files-*.jsonl")):
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(record, dict) or not isinstance(record.get("path"), str):
                continue
            loc = record.get("loc") if isinstance(record.get("loc"), list) else [None, None]
            key = (str(record.get("op")), record["path"])
            rows.setdefault(key, {"op": key[0], "path": key[1], "to": record.get("to"),
                                  "file": (loc + [None, None])[0], "line": (loc + [None, None])[1]})
    return list(rows.values())
