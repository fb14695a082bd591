"""Copying and comparing byte ranges between files, and fsync helpers: tensor bytes never pass through torch."""

from __future__ import annotations

import errno
import os
import threading
import zlib
from pathlib import Path

_CHUNK = 8 << 20


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _copy_whole(source: Path, dest: Path) -> None:
    size = source.stat().st_size
    src_fd = os.open(source, os.O_RDONLY)
    dst_fd = os.open(dest, os.O_WRONLY | os.O_TRUNC)
    try:
        _copy_range(src_fd, dst_fd, 0, 0, size)
    finally:
        os.close(src_fd)
        os.close(dst_fd)


def _same_bytes(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            ca, cb = fa.read(_CHUNK), fb.read(_CHUNK)
            if ca != cb:
                return False
            if not ca:
                return True


def _copy_range(src_fd: int, dst_fd: int, src_off: int, dst_off: int, count: int) -> None:
    """Copy ``count`` bytes between files at the given offsets, in the kernel where possible."""
    use_kernel = hasattr(os, "copy_file_range")
    while count > 0:
        if use_kernel:
            try:
                n = os.copy_file_range(src_fd, dst_fd, min(count, 1 << 30), src_off, dst_off)
            except OSError as exc:
                if exc.errno in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
                    use_kernel = False
                    continue
                raise
        else:
            data = os.pread(src_fd, min(count, _CHUNK), src_off)
            n = len(data) and _pwrite_all(dst_fd, data, dst_off)
        if n == 0:
            raise OSError(errno.EIO, f"unexpected end of the source file at byte {src_off}")
        src_off += n
        dst_off += n
        count -= n


def _pwrite_all(fd: int, data: bytes, offset: int) -> int:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n
    return len(data)


def _compare_ranges(src_fd: int, dst_fd: int, src_off: int, dst_off: int, count: int) -> tuple[bool, int]:
    """Whether two byte ranges are equal, and the CRC-32 of the source range."""
    crc = 0
    a, b = _buffers()
    while count > 0:
        n = min(count, _CHUNK)
        got_a = os.preadv(src_fd, [memoryview(a)[:n]], src_off)
        got_b = os.preadv(dst_fd, [memoryview(b)[:n]], dst_off)
        if got_a != n or got_b != n:
            return False, crc
        if not (a == b if n == _CHUNK else a[:n] == b[:n]):
            return False, crc
        crc = zlib.crc32(memoryview(a)[:n], crc)
        src_off += n
        dst_off += n
        count -= n
    return True, crc


_BUFFERS: tuple[bytearray, bytearray] | None = None


def _buffers() -> tuple[bytearray, bytearray]:
    """Two reusable read buffers: no allocation (and no page faults) per chunk."""
    global _BUFFERS
    if _BUFFERS is None:
        _BUFFERS = (bytearray(_CHUNK), bytearray(_CHUNK))
    return _BUFFERS


class _BackgroundFsync:
    """fsync a file in a thread while the caller verifies it (fsync releases the GIL)."""

    def __init__(self, path: Path):
        self.error: BaseException | None = None
        self._fd = os.open(path, os.O_RDONLY)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            os.fsync(self._fd)
        except BaseException as exc:  # reported by join()
            self.error = exc

    def join(self) -> None:
        self._thread.join()
        os.close(self._fd)
        if self.error is not None:
            raise self.error
