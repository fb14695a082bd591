"""The parent side of a run: start the worker processes, watch them, always clean up.

Each worker leads its own process group, so killing the group also ends the
DataLoader workers and mp.spawn children it started. A run always ends: at the
step budget (the probe stops the script), at the script's own end, when a worker
dies (the others are stopped), at the timeout, or on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from convcheck.runtime import env, forkserver, sandbox
from convcheck.runtime.trace import pid_of, process_tag

_POLL_S = 0.05
#: After one worker fails, how long the others get to fail on their own (gloo peers fail fast).
_PEER_GRACE_S = 3.0
#: How long processes get to write their stack dumps before they are killed.
_STACK_DUMP_WAIT_S = 0.5
_TAIL_CHARS = 4000


@dataclass
class LaunchSpec:
    """What to start."""

    script: Path
    script_args: list[str]
    run_dir: Path
    steps: int
    timeout: float
    nproc_per_node: int | None = None
    max_batches_per_epoch: int | None = None
    show_output: bool = False
    device: str = "auto"
    pretend_cuda: bool = False
    cuda_devices: int = 1
    python: str = sys.executable
    repeat_first_batch: bool = False
    #: Give the first worker convcheck's own stdin when that is a terminal (a prompt, a terminal-size query).
    terminal_stdin: bool = False
    #: Run this module (``python -m`` style) instead of the script file; ``script`` is its source.
    module: str | None = None
    #: "auto", "kernel" or "python": see ``convcheck.runtime.sandbox.MODES``.
    protect_files: str = "auto"
    #: The recorders to install besides the probe's own evidence (None: every available one).
    recorders: list[str] | None = None
    #: Optimizer steps a training loop's epoch lasts when no epoch length was chosen (None: not shortened).
    epoch_steps: int | None = None
    #: "auto" (fork the workers of a several-process run from one server that imported torch, where
    #: the platform allows), "forkserver" (fork even a single process) or "spawn" (a fresh interpreter each).
    start_method: str = "auto"
    #: OMP_NUM_THREADS for a single-process run that shares the machine with other runs (None: not set).
    omp_threads: int | None = None


@dataclass
class WorkerResult:
    """How one worker process ended."""

    index: int
    pid: int
    rank: int | None
    returncode: int | None
    outcome: dict = field(default_factory=dict)
    stderr_tail: str = ""
    stdout_tail: str = ""
    #: Seconds after the launch when the launcher first saw this worker gone (None: it was stopped).
    exited_at: float | None = None


@dataclass
class LaunchResult:
    """How the whole launch ended."""

    workers: list[WorkerResult]
    trace_dir: Path
    scratch_dir: Path
    timed_out: bool = False
    interrupted: bool = False
    wall_seconds: float = 0.0
    stacks: dict[int, str] = field(default_factory=dict)
    first_failure: int | None = None
    #: Worker index -> seconds after the launch when it was first seen gone.
    exited_at: dict[int, float] = field(default_factory=dict)
    #: Did any worker start the user's script before the launch ended?
    script_started: bool = False
    #: How the workers started: "forkserver" (forked from a server that imported torch) or "spawn".
    worker_start: str = "spawn"
    #: What kept the user's files untouched: {"level", "overlaid", "passed_through", "why"}.
    protection: dict = field(default_factory=lambda: {"level": "python"})
    #: Changes the kernel-level layer caught under the protected folders (writers that bypass Python).
    kernel_changes: list[dict] = field(default_factory=list)


def result_from_trace_dir(trace_dir: Path) -> LaunchResult:
    """A LaunchResult for traces written by a launch convcheck did not make (torchrun, srun)."""
    workers = []
    for path in sorted(trace_dir.glob("exit-*.json")):
        try:
            pid = pid_of(path.stem)
            outcome = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, IndexError):
            continue  # damaged (or not an exit record): read_trace_dir's warnings cover the traces
        if not isinstance(outcome, dict):
            continue
        rank, code = outcome.get("rank"), outcome.get("code")
        workers.append(
            WorkerResult(index=len(workers), pid=pid, rank=rank if isinstance(rank, int) else None,
                         returncode=code if isinstance(code, int) else None,
                         outcome={k: v for k, v in outcome.items() if isinstance(k, str)})
        )
    return LaunchResult(workers=workers, trace_dir=trace_dir, scratch_dir=trace_dir / "scratch")


def free_port() -> int:
    """A TCP port that is free on localhost right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def site_dir() -> str:
    """The folder whose sitecustomize loads the probe into every process."""
    from convcheck.runtime import site

    return os.path.dirname(os.path.abspath(site.__file__))


def worker_env(spec: LaunchSpec, rank: int, port: int) -> dict[str, str]:
    """The environment of one worker: the user's, plus the run's settings and the probe's site folder."""
    environ = dict(os.environ)
    original = environ.get("PYTHONPATH", "")
    parts = [site_dir()] + ([original] if original else [])
    environ["PYTHONPATH"] = os.pathsep.join(parts)
    environ[env.TRACE_DIR] = str(spec.run_dir / "trace")
    environ[env.SCRATCH_DIR] = str(spec.run_dir / "scratch")
    environ[env.STEPS] = str(spec.steps)
    if spec.max_batches_per_epoch:
        environ[env.MAX_BATCHES] = str(spec.max_batches_per_epoch)
    else:
        environ.pop(env.MAX_BATCHES, None)
    environ[env.DEVICE] = spec.device
    environ[env.PRETEND_CUDA] = "1" if spec.pretend_cuda else "0"
    environ[env.PRETEND_DEVICES] = str(spec.cuda_devices)
    if spec.repeat_first_batch:
        environ[env.REPEAT_FIRST_BATCH] = "1"
    else:
        environ.pop(env.REPEAT_FIRST_BATCH, None)
    if spec.epoch_steps:
        environ[env.EPOCH_STEPS] = str(spec.epoch_steps)
    else:
        environ.pop(env.EPOCH_STEPS, None)
    if spec.recorders is None:
        environ.pop(env.RECORDERS, None)
    else:
        environ[env.RECORDERS] = ",".join(spec.recorders)
    threads = 1 if (spec.nproc_per_node or 1) > 1 else spec.omp_threads  # several processes: as torchrun does
    if threads is not None and "OMP_NUM_THREADS" not in os.environ:
        environ["OMP_NUM_THREADS"] = str(threads)
    environ["PYTHONUNBUFFERED"] = "1"
    # Importing the user's own modules must not leave __pycache__ folders in their project.
    environ["PYTHONDONTWRITEBYTECODE"] = "1"
    environ["PYTHONFAULTHANDLER"] = "1"
    environ.pop(env.NPROC_PER_NODE, None)
    if spec.nproc_per_node is not None:
        world = spec.nproc_per_node
        environ[env.NPROC_PER_NODE] = str(world)
        environ.update(
            RANK=str(rank), LOCAL_RANK=str(rank), GROUP_RANK="0", ROLE_RANK=str(rank),
            WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world), ROLE_WORLD_SIZE=str(world),
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), TORCHELASTIC_RUN_ID="convcheck",
        )
    return environ


def _terminal_stdin(spec: LaunchSpec) -> bool:
    """Whether the script should read the terminal convcheck runs in, as it would under python."""
    try:
        return spec.terminal_stdin and os.isatty(sys.stdin.fileno())
    except (AttributeError, OSError, ValueError):
        return False


def launch(spec: LaunchSpec, cancel: threading.Event | None = None,
           server: forkserver.ForkServer | None = None) -> LaunchResult:
    """Start the workers, wait for them under the watchdog, and clean up every process.

    ``server``: fork the workers from this server (shared with other launches, which close it);
    without it, a several-process launch starts a server of its own where it may.
    """
    trace_dir = spec.run_dir / "trace"
    scratch_dir = spec.run_dir / "scratch"
    trace_dir.mkdir(parents=True, exist_ok=True)
    scratch_dir.mkdir(parents=True, exist_ok=True)
    from convcheck.runtime.reaper import become_subreaper

    # Children that leave the worker's session (setsid, start_new_session) stay findable.
    become_subreaper()
    port = free_port()
    count = spec.nproc_per_node or 1
    procs: list[subprocess.Popen | forkserver.ForkedWorker] = []
    logs = []
    result = LaunchResult(workers=[], trace_dir=trace_dir, scratch_dir=scratch_dir)
    layer = _protect(spec, result)
    join = layer.join(os.getcwd()) if layer is not None else None
    start = time.monotonic()
    own_server = None
    try:
        for rank in range(count):
            out_path = spec.run_dir / f"stdout-{rank}.txt"
            err_path = spec.run_dir / f"stderr-{rank}.txt"
            stdout = None if spec.show_output else open(out_path, "wb")
            stderr = None if spec.show_output else open(err_path, "wb")
            logs.append((out_path, err_path, stdout, stderr))
        if server is None and _forks(spec, count):
            # Whatever the server prints while importing torch goes where the first worker's output goes.
            server = own_server = forkserver.ForkServer(spec.python, worker_env(spec, 0, port), logs[0][2], logs[0][3])
        for rank in range(count):
            _, _, stdout, stderr = logs[rank]
            target = ["-m", spec.module] if spec.module else [str(spec.script)]
            environ = worker_env(spec, rank, port)
            terminal = rank == 0 and _terminal_stdin(spec)
            if server is not None and not server.gone:
                try:
                    procs.append(_fork_worker(server, [*target, *spec.script_args], environ, terminal,
                                              stdout, stderr, layer))
                    continue
                except forkserver.ServerGone:
                    pass  # started below as a fresh interpreter, as without a server
            cmd = [spec.python, "-m", "convcheck.runtime.worker", *target, *spec.script_args]
            procs.append(
                subprocess.Popen(
                    cmd, env=environ, stdin=None if terminal else subprocess.DEVNULL,
                    stdout=stdout, stderr=stderr, start_new_session=True, preexec_fn=join,
                )
            )
        _wait(procs, spec, result, start, cancel)
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        if result.timed_out:
            result.stacks = _dump_stacks(procs, trace_dir)
        _kill_all(procs, trace_dir, layer)
        if own_server is not None:
            own_server.close()
        result.wall_seconds = time.monotonic() - start
        if layer is not None:
            layer.close()
            result.kernel_changes = layer.changes()
            sandbox.remove(layer.layer_dir)
        for _, _, stdout, stderr in logs:
            for handle in (stdout, stderr):
                if handle is not None:
                    handle.close()
    for index, proc in enumerate(procs):
        out_path, err_path, _, _ = logs[index]
        worker = WorkerResult(
            index=index, pid=proc.pid, rank=index if spec.nproc_per_node is not None else None,
            returncode=proc.returncode, stderr_tail=_tail(err_path), stdout_tail=_tail(out_path),
            exited_at=result.exited_at.get(index),
        )
        exit_file = trace_dir / f"exit-{process_tag(proc.pid)}.json"
        if exit_file.exists():
            try:
                worker.outcome = json.loads(exit_file.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                pass
        result.workers.append(worker)
    result.script_started = any(trace_dir.glob("begun-*"))
    if any(isinstance(proc, forkserver.ForkedWorker) for proc in procs):
        result.worker_start = "forkserver"
    return result


def _forks(spec: LaunchSpec, count: int) -> bool:
    """Should this launch fork its workers from a server that imported torch once?"""
    if spec.start_method == "spawn" or not forkserver.usable():
        return False
    return count > 1 or spec.start_method == "forkserver"


def _fork_worker(server: forkserver.ForkServer, argv: list[str], environ: dict[str, str], terminal: bool,
                 stdout, stderr, layer) -> forkserver.ForkedWorker:  # noqa: ANN001
    """One worker forked by the server, with the descriptors a spawned one would have been given."""
    opened = []
    try:
        if terminal:
            stdin_fd = sys.stdin.fileno()
        else:
            stdin_fd = os.open(os.devnull, os.O_RDONLY)
            opened.append(stdin_fd)
        stdio = [stdin_fd, (stdout or sys.stdout).fileno(), (stderr or sys.stderr).fileno()]
        namespace = layer.fds() if layer is not None else ()
        pid = server.start(argv, environ, os.getcwd(), stdio, namespace)
    finally:
        for fd in opened:
            os.close(fd)
    return forkserver.ForkedWorker(server, pid)


def launch_many(specs: dict[str, LaunchSpec]) -> dict[str, LaunchResult]:
    """Launch several runs side by side (a check's extra runs next to the main one).

    The first run forks its workers from a server of its own (when it has several); the runs after it,
    which are there to be compared with it, share one, so a side run costs a fork rather than an
    interpreter importing torch. The two servers draw their own string-hash seeds, as two launches of
    the script would.
    """
    if len(specs) == 1:
        return {label: launch(spec) for label, spec in specs.items()}
    from concurrent.futures import ThreadPoolExecutor

    specs = _share_cores(specs)

    cancel = threading.Event()
    shared = _shared_server(list(specs.values())[1:])
    try:
        with ThreadPoolExecutor(max_workers=len(specs)) as pool:
            futures = {label: pool.submit(launch, spec, cancel, shared if index else None)
                       for index, (label, spec) in enumerate(specs.items())}
            try:
                return {label: future.result() for label, future in futures.items()}
            except KeyboardInterrupt:
                # Ctrl-C reaches this thread only: tell the launches to stop, clean up, and
                # report what they gathered (each result says it was interrupted).
                cancel.set()
                return {label: future.result() for label, future in futures.items()}
    finally:
        if shared is not None:
            shared.close()


def _share_cores(specs: dict[str, LaunchSpec]) -> dict[str, LaunchSpec]:
    """Give a single-process run its share of the cores when other runs' processes run beside it.

    torch starts one OpenMP thread per core in every process; two processes each spinning a thread per
    core on the same cores can take several times as long as one (a 2.5 s script took 7 s beside its
    repeat). A run of several processes already has one thread each, as under torchrun.
    """
    import dataclasses

    total = sum(spec.nproc_per_node or 1 for spec in specs.values())
    share = max(1, usable_cores() // total)
    return {label: dataclasses.replace(spec, omp_threads=share) if (spec.nproc_per_node or 1) == 1 else spec
            for label, spec in specs.items()}


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _shared_server(specs: list[LaunchSpec]) -> forkserver.ForkServer | None:
    """One server for these runs when together they start several processes (None: each starts its own way)."""
    if not specs or not all(_forks(spec, sum(s.nproc_per_node or 1 for s in specs)) for spec in specs):
        return None
    # OpenMP reads its thread count once, when the server imports torch: every worker must want the same.
    if len({(s.python, worker_env(s, 0, 0).get("OMP_NUM_THREADS")) for s in specs}) > 1:
        return None
    home = Path(os.path.commonpath([str(s.run_dir.parent) for s in specs])) / ".forkserver"
    (home / "trace").mkdir(parents=True, exist_ok=True)
    (home / "scratch").mkdir(parents=True, exist_ok=True)
    environ = worker_env(specs[0], 0, 0)
    # Not the trace folder of any run: stopping one run must not stop the server the others fork from.
    environ[env.TRACE_DIR] = str(home / "trace")
    environ[env.SCRATCH_DIR] = str(home / "scratch")
    log = open(home / "output.txt", "wb")
    try:
        return forkserver.ForkServer(specs[0].python, environ, log, log, home=home)
    finally:
        log.close()


def _wait(
    procs: list[subprocess.Popen], spec: LaunchSpec, result: LaunchResult, start: float,
    cancel: threading.Event | None,
) -> None:
    failed_at: float | None = None
    while True:
        if cancel is not None and cancel.is_set():
            result.interrupted = True
            return
        codes = [p.poll() for p in procs]
        now = time.monotonic()
        for index, code in enumerate(codes):
            if code is not None:
                result.exited_at.setdefault(index, now - start)
        if all(c is not None for c in codes):
            return
        for index, code in enumerate(codes):
            if code not in (None, 0) and result.first_failure is None:
                result.first_failure = index
                failed_at = now
        if failed_at is not None and now - failed_at > _PEER_GRACE_S:
            return
        if now - start > spec.timeout:
            result.timed_out = True
            return
        time.sleep(_POLL_S)


def _dump_stacks(procs: list[subprocess.Popen], trace_dir: Path) -> dict[int, str]:
    """Ask every live worker where it is (faulthandler on SIGUSR1) before killing it."""
    alive = [p for p in procs if p.poll() is None]
    for proc in alive:
        try:
            os.kill(proc.pid, signal.SIGUSR1)
        except (ProcessLookupError, PermissionError):
            pass
    time.sleep(_STACK_DUMP_WAIT_S if alive else 0)
    stacks = {}
    for path in trace_dir.glob("stack-*.txt"):
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        if text:
            stacks[pid_of(path.stem)] = text
    return stacks


def _protect(spec: LaunchSpec, result: LaunchResult):  # noqa: ANN202
    """Build the kernel-level layer when asked and possible; record which level protects the run."""
    if spec.protect_files == "python":
        result.protection = {"level": "python", "why": "--protect-files python"}
        return None
    cwd = os.getcwd()
    candidates = [cwd, str(spec.script.parent), os.path.expanduser("~"),
                  *sandbox.path_arguments(spec.script_args, cwd)]
    layer_dir = spec.run_dir / sandbox.LAYER_DIR
    if any(sandbox.inside(str(spec.run_dir.resolve()), os.path.realpath(c)) for c in candidates):
        # The run's folder lies in a protected folder (--trace-dir ./traces): the layer lives elsewhere.
        from convcheck.runtime import reaper

        layer_dir = Path(tempfile.mkdtemp(prefix=reaper.RUN_PREFIX))
        reaper.claim(layer_dir)
    try:
        layer = sandbox.build(layer_dir, candidates, passed=[str(spec.run_dir)], python=spec.python)
    except sandbox.SandboxUnavailable as exc:
        result.protection = {"level": "python", "why": str(exc)}
        sandbox.remove(layer_dir)
        if spec.protect_files == "kernel":
            raise
        return None
    result.protection = layer.describe()
    return layer


def _kill_all(procs: list[subprocess.Popen], trace_dir: Path, layer=None) -> None:  # noqa: ANN001
    """Kill each worker's process group and every other process of the run: no orphan survives it."""
    from convcheck.runtime.reaper import stop_run

    stop_run([proc.pid for proc in procs], trace_dir, ns_inode=layer.ns_inode if layer is not None else None)
    for proc in procs:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def _tail(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-_TAIL_CHARS:].decode("utf-8", errors="replace")
