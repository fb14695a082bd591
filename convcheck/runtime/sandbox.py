"""A kernel-level copy-on-write layer under the user's folders (Linux mount namespace + overlayfs).

The Python-level guard (``fsguard``) sees what goes through Python's file layer. A
shell started by the script, a compiled extension or any other native writer goes
around it. Where Linux allows it, every process of a run therefore lives in a private
mount namespace in which the user's folders (the working folder, the script's folder,
the home folder and existing folders named in the script's arguments, with the mounts
below them) are overlayfs mounts: reads see the real files, and every write, create,
rename or delete lands in an upper folder inside the run's own folder, which is thrown
away with it. The namespace is built by a short-lived holder process; the workers join
it before their first instruction runs, and everything they start inherits it, which
also tells the run's processes apart from every other on the machine.

Passed through (bound back into the namespace unchanged): the user cache folder, the
run's own folder, and mounts below a protected folder that overlayfs cannot stack on
(proc, sysfs, FUSE …), which the report lists. A folder that holds the run's own
folder (the system temp folder itself, ``/``) cannot be overlaid and stays Python-level.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_MNT_DETACH = 2
#: Filesystems overlayfs stacks on; below a protected folder, anything else is bound back as it is.
_OVERLAYABLE = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "overlay", "f2fs", "zfs", "vfat",
                          "exfat", "ntfs3", "jfs", "reiserfs", "nfs", "nfs4", "9p", "virtiofs"})
_PSEUDO_ROOTS = ("/proc", "/sys", "/dev", "/run")
#: The folder inside a run folder that holds the upper and work folders of the overlays.
LAYER_DIR = "fs"

#: ``auto``: kernel-level when the platform allows it, else Python-level; ``kernel``: refuse to run
#: without it; ``python``: Python-level only.
MODES = ("auto", "kernel", "python")


class SandboxUnavailable(RuntimeError):
    """The kernel-level layer cannot be built here (its message says why)."""


@dataclass
class Mount:
    """One line of /proc/self/mountinfo, as far as the layer needs it."""

    path: str
    fstype: str
    options: str = ""


@dataclass
class Layer:
    """A built namespace: how to join it, what is overlaid where, and what is passed through."""

    layer_dir: Path
    mnt_fd: int
    user_fd: int | None
    ns_inode: int
    #: Protected folder -> its upper folder (where the run's changes land).
    overlays: dict[str, str] = field(default_factory=dict)
    #: Mounts below a protected folder bound back unchanged, with why.
    passed: list[dict] = field(default_factory=list)

    def join(self, cwd: str) -> Callable[[], None]:
        """A ``preexec_fn`` that moves the new process into the namespace (and into the overlaid cwd)."""
        libc = _libc()
        user_fd, mnt_fd = self.user_fd, self.mnt_fd

        def enter() -> None:
            enter_namespace(mnt_fd, user_fd, cwd, libc)

        return enter

    def fds(self) -> tuple[int, ...]:
        """The descriptors a joining process must inherit."""
        return tuple(fd for fd in (self.mnt_fd, self.user_fd) if fd is not None)

    def close(self) -> None:
        """Let the namespace go (it ends with its last process)."""
        for fd in self.fds():
            with contextlib.suppress(OSError):
                os.close(fd)

    def changes(self) -> list[dict]:
        """What the run's processes changed under the protected folders, read from the upper folders."""
        rows: list[dict] = []
        for root, upper in self.overlays.items():
            rows.extend(_upper_changes(root, Path(upper)))
        return rows

    def describe(self) -> dict:
        """The report's view of the layer."""
        return {"level": "kernel", "overlaid": sorted(self.overlays), "passed_through": self.passed}


def enter_namespace(mnt_fd: int, user_fd: int | None, cwd: str, libc=None) -> None:  # noqa: ANN001
    """Move this (single-threaded) process into a layer's namespace and into the overlaid ``cwd``."""
    setns = (libc or _libc()).setns
    if user_fd is not None and setns(user_fd, _CLONE_NEWUSER) != 0:
        raise OSError("setns(user) failed")
    if setns(mnt_fd, _CLONE_NEWNS) != 0:
        raise OSError("setns(mnt) failed")
    # The inherited cwd is the folder under the overlay: resolve it again inside the namespace.
    os.chdir(cwd)


def _libc():  # noqa: ANN202
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.unshare.argtypes = [ctypes.c_int]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return libc


def read_mounts(text: str | None = None) -> list[Mount]:
    """The mounts of this process's namespace."""
    if text is None:
        text = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="replace")
    mounts = []
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or not tail:
            continue
        mounts.append(Mount(path=_unescape(fields[4]), fstype=tail[0], options=" ".join(tail[2:3])))
    return mounts


def _unescape(field_text: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    out, i = [], 0
    while i < len(field_text):
        code = field_text[i + 1:i + 4]
        if field_text[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field_text[i])
            i += 1
    return "".join(out)


def inside(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies below it (both absolute, normalised)."""
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def plan_roots(candidates: Iterable[str], keep_out: Iterable[str]) -> list[str]:
    """The folders to overlay: existing folders, outermost only, none that holds a kept-out path."""
    keep_out = [os.path.realpath(p) for p in keep_out]
    roots: list[str] = []
    for raw in candidates:
        path = os.path.realpath(raw)
        if not os.path.isdir(path) or path == "/" or any(inside(path, p) for p in _PSEUDO_ROOTS):
            continue
        if any(inside(k, path) for k in keep_out):
            continue  # the layer's own upper folders would lie inside what it overlays
        roots.append(path)
    outer = [r for r in roots if not any(r != o and inside(r, o) for o in roots)]
    return sorted(set(outer))


def path_arguments(args: Iterable[str], cwd: str) -> list[str]:
    """Existing folders named by the script's arguments (``--out-dir x``, ``--save=/ckpt/a.pt``)."""
    found = []
    for arg in args:
        value = arg.split("=", 1)[1] if arg.startswith("-") and "=" in arg else arg
        if not value or value.startswith("-") or ("/" not in value and not os.path.exists(os.path.join(cwd, value))):
            continue
        path = os.path.join(cwd, value)
        folder = path if os.path.isdir(path) else os.path.dirname(path)
        if os.path.isdir(folder):
            found.append(folder)
    return found


def cache_dir() -> str:
    """The user cache folder (compiler and download caches), passed through as the Python-level guard does."""
    return os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")


def build(layer_dir: Path, candidates: Iterable[str], passed: Iterable[str] = (),
          python: str = sys.executable) -> Layer:
    """Build the namespace for one run; raises SandboxUnavailable with the reason when it cannot.

    ``layer_dir`` receives the overlays' upper folders; ``passed`` are folders (the run's own) that
    must stay writable as they are even when they lie inside a protected one.
    """
    if not sys.platform.startswith("linux"):
        raise SandboxUnavailable("a kernel-level layer needs Linux (mount namespaces and overlayfs)")
    roots = plan_roots(candidates, keep_out=[str(layer_dir)])
    if not roots:
        raise SandboxUnavailable("no folder to protect could be overlaid")
    layer_dir.mkdir(parents=True, exist_ok=True)
    through = [os.path.realpath(p) for p in (cache_dir(), *passed)]
    plan = {"layer_dir": str(layer_dir), "roots": roots,
            "pass": [p for p in through if any(inside(p, r) for r in roots)]}
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVCHECK_")}
    env.pop("PYTHONPATH", None)
    try:
        holder = subprocess.Popen(
            [python, "-S", "-c", _HOLDER_BOOT, os.path.dirname(os.path.dirname(os.path.dirname(
                os.path.abspath(__file__)))), json.dumps(plan)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )
    except OSError as exc:
        raise SandboxUnavailable(f"the namespace holder could not start ({exc})") from exc
    try:
        line = holder.stdout.readline().decode("utf-8", errors="replace")
        try:
            answer = json.loads(line)
        except ValueError:
            answer = {"error": (holder.stderr.read().decode("utf-8", errors="replace").strip().splitlines()
                                or ["it ended without an answer"])[-1]}
        if not answer.get("ok"):
            raise SandboxUnavailable(answer.get("error", "unknown reason"))
        mnt_fd = os.open(f"/proc/{holder.pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        user_fd = (os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
                   if answer.get("userns") else None)
        inode = os.stat(f"/proc/{holder.pid}/ns/mnt").st_ino
    finally:
        with contextlib.suppress(OSError):
            holder.stdin.close()
        try:
            holder.wait(timeout=10)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()
        for pipe in (holder.stdout, holder.stderr):
            pipe.close()
    return Layer(layer_dir=layer_dir, mnt_fd=mnt_fd, user_fd=user_fd, ns_inode=inode,
                 overlays=answer["overlays"], passed=answer["passed"])


# The holder runs with -S (no site, so no sitecustomize of a run) and imports only this module.
_HOLDER_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from convcheck.runtime.sandbox import _hold; _hold(sys.argv[2])"
)


def _hold(plan_json: str) -> None:
    """The holder: enter new namespaces, mount the overlays, answer, and wait for the launcher."""
    try:
        answer = _mount_all(json.loads(plan_json))
        answer["ok"] = True
    except Exception as exc:  # noqa: BLE001 - every failure is an answer, never a traceback
        answer = {"ok": False, "error": str(exc)}
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
    sys.stdin.read()  # the launcher has opened the namespace once it closes this pipe


def _check(result: int, what: str) -> None:
    if result != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount_all(plan: dict) -> dict:
    libc = _libc()
    uid, gid = os.geteuid(), os.getegid()
    userns = uid != 0
    _check(libc.unshare(_CLONE_NEWNS | (_CLONE_NEWUSER if userns else 0)), "unshare")
    if userns:
        # Map the user onto itself: the script keeps its own uid, and files it creates keep their owner.
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    # Nothing mounted here may reach the machine's own namespace.
    _check(libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "making mounts private")
    layer = Path(plan["layer_dir"])
    roots: list[str] = plan["roots"]
    below = [m for m in read_mounts() if any(m.path != r and inside(m.path, r) for r in roots)]
    targets = [(r, True) for r in roots]
    passed = []
    for mount in below:
        stackable = mount.fstype in _OVERLAYABLE and not any(inside(mount.path, p) for p in plan["pass"])
        targets.append((mount.path, stackable))
        if not stackable:
            passed.append({"path": mount.path, "why": f"{mount.fstype} mount"})
    extra = [p for p in plan["pass"] if os.path.isdir(p)]
    # Stage the original of every target before anything is mounted over it.
    staged = {}
    for index, path in enumerate([t for t, _ in targets] + extra):
        stage = layer / "lower" / str(index)
        stage.mkdir(parents=True, exist_ok=True)
        _check(libc.mount(path.encode(), str(stage).encode(), None, _MS_BIND | _MS_REC, None), f"staging {path}")
        staged.setdefault(path, str(stage))
    overlays = {}
    for index, (path, stackable) in enumerate(sorted(targets, key=lambda t: t[0].count("/"))):
        if not stackable:
            _check(libc.mount(staged[path].encode(), path.encode(), None, _MS_BIND | _MS_REC, None),
                   f"binding {path} back")
            continue
        upper, work = layer / "upper" / str(index), layer / "work" / str(index)
        upper.mkdir(parents=True)
        work.mkdir(parents=True)
        options = f"lowerdir={staged[path]},upperdir={upper},workdir={work}"
        result = libc.mount(b"overlay", path.encode(), b"overlay", 0, (options + ",userxattr").encode()) \
            if userns else libc.mount(b"overlay", path.encode(), b"overlay", 0, options.encode())
        _check(result, f"overlaying {path}")
        overlays[path] = str(upper)
    for path in extra:
        _check(libc.mount(staged[path].encode(), path.encode(), None, _MS_BIND | _MS_REC, None),
               f"passing {path} through")
    # The staged originals stay reachable only through the overlays and the binds made from them.
    for stage in staged.values():
        libc.umount2(stage.encode(), _MNT_DETACH)
    return {"overlays": overlays, "passed": passed, "userns": userns}


def _upper_changes(root: str, upper: Path) -> list[dict]:
    rows = []
    for folder, dirs, files in os.walk(upper):
        for name in sorted(dirs + files):
            entry = Path(folder) / name
            real = os.path.join(root, os.path.relpath(entry, upper))
            try:
                info = entry.lstat()
            except OSError:
                continue
            if stat.S_ISCHR(info.st_mode) and info.st_rdev == 0:
                rows.append({"op": "delete", "path": real, "level": "kernel"})
            elif stat.S_ISDIR(info.st_mode):
                if not os.path.lexists(real):
                    rows.append({"op": "mkdir", "path": real, "level": "kernel"})
            elif os.path.lexists(real):
                rows.append({"op": "write", "path": real, "level": "kernel"})
            else:
                rows.append({"op": "create", "path": real, "level": "kernel"})
    return rows


def _by_namespace() -> dict[int, list[int]]:
    """Every readable process but this one, by the inode of its mount namespace."""
    by_ns: dict[int, list[int]] = {}
    if not os.path.isdir("/proc"):
        return by_ns
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                by_ns.setdefault(os.stat(f"/proc/{entry.name}/ns/mnt").st_ino, []).append(int(entry.name))
    return by_ns


def members(ns_inode: int) -> list[int]:
    """Every process in the mount namespace with this inode (the run's processes, wherever they went)."""
    return _by_namespace().get(ns_inode, [])


def processes_of(layer_dir: Path) -> list[int]:
    """Processes still inside a (stale) run's namespace, told by the overlay whose upper folder lies in it."""
    wanted = f"upperdir={layer_dir}/"
    found = []
    for pids in _by_namespace().values():
        for pid in pids:
            try:
                text = Path(f"/proc/{pid}/mountinfo").read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            if wanted in text:
                found.extend(pids)
            break
    return found


def remove(folder: Path) -> None:
    """Delete a layer folder, including overlayfs's inaccessible work folders."""
    for path, dirs, _ in os.walk(folder):
        for name in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(path, name), 0o700)
    shutil.rmtree(folder, ignore_errors=True)


def probe_available(python: str = sys.executable) -> str | None:
    """None when a kernel-level layer can be built here, else the reason it cannot."""
    folder = Path(tempfile.mkdtemp(prefix="convcheck-fs-probe-"))
    try:
        (folder / "root").mkdir()
        layer = build(folder / "layer", [str(folder / "root")], python=python)
        layer.close()
        return None
    except SandboxUnavailable as exc:
        return str(exc)
    finally:
        remove(folder)
