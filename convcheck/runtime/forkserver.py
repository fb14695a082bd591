"""One process that imports torch once and forks every worker of a run from it (Linux).

A fresh Python process pays about a second of CPU to import torch; a run of N processes
pays it N times, and on a machine with fewer cores than processes that is most of the
time to a verdict. For a run of several processes the launcher starts this server
instead: it imports torch without the probe, then forks one worker per request. Each
worker then becomes what a fresh worker would have been: its own session, its own
stdin/stdout/stderr, its rank's environment, the run's mount namespace, freshly seeded
RNGs (a fork copies the parent's state; a new process draws new seeds), and the probe
installed as it is at ``import torch``.

What a fork cannot give a worker of its own is Python's string-hash seed: the workers of
one run share it (under torchrun every rank draws one). Each run (the main run, CC002's
repeat) has its own server, so two runs still differ in it as two launches of a script do.

Protocol, over a SOCK_SEQPACKET socket pair: the launcher sends ``{"argv", "env", "cwd"}``
with the descriptors stdin, stdout, stderr (then the namespace's mount and user descriptors);
the server answers ``{"started": pid}``, and later ``{"exited": pid, "code": code}`` for every
worker, ``code`` as ``Popen.returncode`` has it.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from convcheck.runtime import env, reaper

_MAX_MESSAGE = 1 << 20
_MAX_FDS = 8
_POLL_S = 0.02
#: Variables that differ between the ranks of one run: given to each worker, never to the server.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "ROLE_RANK", "GROUP_RANK")


def _preload() -> None:
    """Import what every worker imports: torch, and the probe's own modules.

    torch imports dynamo (another second of CPU) the first time any optimizer is built, so every
    training process pays it: it is imported here once for all of them.
    """
    try:
        import torch  # noqa: F401
        import torch._dynamo  # noqa: F401
        import torch.distributed  # noqa: F401
        import torch.nn.parallel  # noqa: F401
    except BaseException:  # noqa: BLE001 - a worker that imports torch itself reports the error
        pass
    import convcheck.runtime.probe  # noqa: F401
    import convcheck.runtime.worker  # noqa: F401


def _send(sock: socket.socket, message: dict) -> None:
    try:
        sock.send(json.dumps(message).encode())
    except OSError:
        pass


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(sock, {"exited": pid, "code": os.waitstatus_to_exitcode(status)})


def serve(sock: socket.socket) -> None:
    """Answer fork requests until the launcher closes its end."""
    _preload()
    sock.setblocking(False)
    while True:
        _reap(sock)
        readable, _, _ = select.select([sock], [], [], _POLL_S)
        if not readable:
            continue
        try:
            data, fds, _, _ = socket.recv_fds(sock, _MAX_MESSAGE, _MAX_FDS)
        except BlockingIOError:
            continue
        except OSError:
            return
        if not data:
            return  # the launcher is done (its workers were ended before it let go)
        request = json.loads(data)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _become_worker(sock, request, fds)  # never returns
        for fd in fds:
            os.close(fd)
        _send(sock, {"started": pid})


def _become_worker(sock: socket.socket, request: dict, fds: list[int]) -> None:
    """In the forked child: turn into the worker the request describes, run the script, and exit."""
    try:
        sock.close()
        os.setsid()
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        namespace = fds[3:]
        os.environ.clear()
        os.environ.update(request["env"])
        if namespace:
            from convcheck.runtime.sandbox import enter_namespace

            enter_namespace(namespace[0], namespace[1] if len(namespace) > 1 else None, request["cwd"])
        else:
            os.chdir(request["cwd"])
        for fd in fds:
            if fd > 2:
                os.close(fd)
        _fresh_random_state()
        from convcheck.runtime import bootstrap, fsguard, worker

        fsguard.retarget_from_env()
        sys.argv = [worker.__file__, *request["argv"]]
        # The probe is installed where a fresh worker's would be, at `import torch`: once the
        # script's argv and the entry process are set, just before its first line.
        worker.main(before_run=bootstrap.activate)  # leaves with os._exit
    except BaseException:  # noqa: BLE001 - whatever happens, this process must not return to the server loop
        traceback.print_exc()
        sys.stderr.flush()
    os._exit(1)


def _fresh_random_state() -> None:
    """Seed what a new process seeds from the OS: forked children would all share the server's state.

    Python's ``random`` reseeds itself after a fork; torch's CPU generator and NumPy's global
    RNG do not. CUDA's generators are untouched: they are created (and seeded) on first use.
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.default_generator.seed()
    np_random = sys.modules.get("numpy.random")
    if np_random is not None:
        np_random.seed()


def main() -> None:
    """Entry point: ``python -m convcheck.runtime.forkserver FD``."""
    from convcheck.runtime.worker import die_with_parent

    die_with_parent()
    sock = socket.socket(fileno=int(sys.argv[1]))
    serve(sock)
    os._exit(0)


if __name__ == "__main__":
    main()


# -- the launcher's end ----------------------------------------------------------------------


class ServerGone(RuntimeError):
    """The fork server ended before it started the worker asked for."""


class ForkServer:
    """The launcher's handle on one run's fork server."""

    def __init__(self, python: str, environ: dict[str, str], stdout, stderr,  # noqa: ANN001
                 home: Path | None = None) -> None:
        """Start the server; ``home``: a folder of its own, removed when it is closed."""
        self.home = home

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        server_env = {k: v for k, v in environ.items() if k not in RANK_VARIABLES}
        server_env[env.FORKSERVER] = "1"
        try:
            self.proc = subprocess.Popen(
                [python, "-m", "convcheck.runtime.forkserver", str(theirs.fileno())], env=server_env,
                stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, start_new_session=True,
                pass_fds=(theirs.fileno(),),
            )
        finally:
            theirs.close()
        self.sock = ours
        self.codes: dict[int, int] = {}
        self.gone = False
        # Runs launched side by side (each in its own thread) may share one server.
        self._lock = threading.RLock()

    def start(self, argv: list[str], environ: dict[str, str], cwd: str, stdio: list[int],
              namespace: tuple[int, ...] = ()) -> int:
        """Ask for one worker; its pid once the server has forked it."""
        message = json.dumps({"argv": argv, "env": environ, "cwd": cwd}).encode()
        with self._lock:
            try:
                socket.send_fds(self.sock, [message], [*stdio, *namespace])
            except OSError as exc:
                raise ServerGone(str(exc)) from exc
            while True:
                reply = self._receive(timeout=_POLL_S)
                if reply is not None and "started" in reply:
                    return int(reply["started"])
                if self.gone or self.proc.poll() is not None:
                    raise ServerGone("the fork server ended")

    def _receive(self, timeout: float) -> dict | None:
        """One message (exit reports are recorded on the way); None when there is none yet."""
        while True:
            if self.gone:
                return None
            readable, _, _ = select.select([self.sock], [], [], timeout)
            if not readable:
                return None
            try:
                data = self.sock.recv(_MAX_MESSAGE)
            except OSError:
                data = b""
            if not data:
                self.gone = True
                return None
            message = json.loads(data)
            if "exited" in message:
                self.codes[int(message["exited"])] = int(message["code"])
                timeout = 0
                continue
            return message

    def returncode(self, pid: int) -> int | None:
        """How worker ``pid`` ended, as ``Popen.returncode`` says it; None while it runs."""
        with self._lock:
            return self._returncode(pid)

    def _returncode(self, pid: int) -> int | None:
        self._receive(timeout=0)
        if pid in self.codes:
            return self.codes[pid]
        if self.gone or self.proc.poll() is not None:
            # The server was killed before it could report: the worker was re-parented here (the
            # launcher is a subreaper) or has been collected by whoever now owns it.
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return None if reaper.alive(pid) else self.codes.setdefault(pid, -9)
            if done:
                self.codes[pid] = os.waitstatus_to_exitcode(status)
                return self.codes[pid]
        return None

    def close(self) -> None:
        """Let the server go (its workers have been stopped) and collect it."""
        with self._lock:
            self.sock.close()
            self.gone = True
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)


class ForkedWorker:
    """A worker the fork server started, with the part of ``subprocess.Popen`` the launcher uses."""

    def __init__(self, server: ForkServer, pid: int) -> None:
        self.server = server
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The exit code, or None while it runs."""
        if self.returncode is None:
            self.returncode = self.server.returncode(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait until it ends (``subprocess.TimeoutExpired`` after ``timeout`` seconds)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout)
            time.sleep(_POLL_S)
        return self.returncode


def usable() -> bool:
    """Can workers be forked from a server here (Linux, descriptor passing)?"""
    return sys.platform.startswith("linux") and hasattr(socket, "send_fds")
