"""The fault matrix: what a run promises (the user's files untouched, every process gone, every
crash told truly, bad input refused) held against small scripts that try to break it.

Every test runs convcheck as a user would, in a project folder of its own, with the system temp
folder pointed at a folder of its own (so the run's folders and the stale-run clean-up are
isolated), and asserts the exact exit code, the message, the project folder byte for byte, and
that no process of the run is alive afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cc_testing import REPO, processes_running, sigint_as_from_a_terminal
from convcheck.exitcodes import ExitCode
from convcheck.runtime import reaper, sandbox
from convcheck.runtime.launcher import site_dir
from convcheck.runtime.trace import event_problem

# Long end-to-end runs (the fault matrix, one run per promise): `python -m pytest -m slow`, which CI runs too.
pytestmark = pytest.mark.slow

#: Why no kernel-level layer can be built on this machine (None: it can).
KERNEL_LAYER = sandbox.probe_available()
needs_kernel_layer = pytest.mark.skipif(KERNEL_LAYER is not None, reason=f"no kernel-level layer: {KERNEL_LAYER}")

TRAIN_LOOP = """
model = torch.nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(1000):
    loss = model(torch.randn(8, 4)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
"""


class Project:
    """A user's project folder, the temp folder the run uses, and convcheck run inside them."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "project"
        self.dir.mkdir()
        self.tmp = root / "systmp"
        self.tmp.mkdir()

    def write(self, name: str, text: str, loop: bool = False) -> Path:
        """A file in the project; with ``loop`` a training loop follows the (dedented) text."""
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text) + (TRAIN_LOOP if loop else ""))
        return path

    def env(self, **extra: str) -> dict[str, str]:
        environ = dict(os.environ, TMPDIR=str(self.tmp), **extra)
        environ.pop("CONVCHECK_TRACE_DIR", None)
        return environ

    def run(self, *args: object, timeout: float = 240, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "convcheck", *map(str, args)], cwd=self.dir, env=self.env(**extra),
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )

    def start(self, *args: object) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "convcheck", *map(str, args)], cwd=self.dir, env=self.env(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
            preexec_fn=sigint_as_from_a_terminal,
        )

    def state(self) -> dict[str, str]:
        """Every file and folder under the project, with a hash of each file's bytes."""
        found = {}
        for path in sorted(self.dir.rglob("*")):
            rel = path.relative_to(self.dir).as_posix()
            if path.is_dir():
                found[rel] = "<dir>"
            elif path.is_file():
                found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                found[rel] = "<special>"
        return found

    def alive(self) -> list[str]:
        """Processes of the run still alive: by the project path in their arguments, or the run's environment."""
        found = processes_running(str(self.dir))
        found += [f"pid {pid}" for pid in reaper.tagged(self.tmp, below=True)]
        return found

    def assert_clean(self, before: dict[str, str]) -> None:
        """The project is byte-identical, no process of the run is alive, no run folder is left."""
        assert self.state() == before
        deadline = time.monotonic() + 10
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert self.alive() == []
        assert list(self.tmp.glob("convcheck-run-*")) == []


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path)


def wait_for(predicate, timeout: float = 120) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


# --------------------------------------------------------------------------- the user's files

FILES_SCRIPT = """
import logging, os, pathlib, shutil
import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.utils.tensorboard import SummaryWriter

here = pathlib.Path(__file__).parent

def check(ok, what):
    if not ok:
        raise SystemExit(f"the run's view is wrong: {what}")

with open(here / "log.txt", "a") as fh:
    fh.write("appended by the run\\n")
check(open(here / "log.txt").read() == "the user's log\\nappended by the run\\n", "append, read back")
with open(here / "notes.txt", "w") as fh:
    fh.write("overwritten")
check((here / "notes.txt").read_text() == "overwritten", "overwrite, read back")
with open(here / "notes.txt", "r+") as fh:
    fh.write("O")
check((here / "notes.txt").read_text() == "Overwritten", "r+, read back")
logging.basicConfig(filename=here / "train.log", level=logging.INFO, force=True)
logging.info("hello")
np.save(here / "arr.npy", np.arange(3))
check(np.load(here / "arr.npy").tolist() == [0, 1, 2], "numpy")
np.savez(here / "arrs.npz", a=np.arange(2))
model = torch.nn.Linear(4, 2)
with open(here / "ckpt.pt", "wb") as fh:
    torch.save(model.state_dict(), fh)
check(torch.equal(torch.load(here / "ckpt.pt")["weight"], model.weight), "torch.save to a file object")
torch.jit.save(torch.jit.script(model), here / "model.jit")
check(torch.equal(torch.jit.load(here / "model.jit").weight, model.weight), "torch.jit")
save_file(model.state_dict(), str(here / "model.safetensors"))
check(torch.equal(load_file(str(here / "model.safetensors"))["weight"], model.weight), "safetensors")
writer = SummaryWriter(str(here / "runs"))
writer.add_scalar("loss", 1.0, 0)
writer.close()
os.remove(here / "old.txt")
check(not os.path.exists(here / "old.txt"), "os.remove")
shutil.rmtree(here / "data")
check(not (here / "data").exists() and not (here / "data" / "a.bin").exists(), "shutil.rmtree")
os.makedirs(here / "out" / "sub")
(here / "out" / "sub" / "x.json").write_text("{}")
os.replace(here / "notes.txt", here / "notes2.txt")
check(not (here / "notes.txt").exists() and (here / "notes2.txt").read_text() == "Overwritten", "os.replace")
shutil.copy(here / "log.txt", here / "log-copy.txt")
shutil.move(here / "log-copy.txt", here / "log-moved.txt")
check((here / "log-moved.txt").read_text().endswith("appended by the run\\n"), "shutil.copy and move")
os.truncate(here / "log-moved.txt", 3)
check((here / "log-moved.txt").read_text() == "the", "os.truncate")
check(torch.equal(torch.load(here / "ckpt.pt", mmap=True)["weight"], model.weight), "torch.load(mmap=True)")
import helper
check(helper.VALUE == 7, "a module of the project")
names = sorted(os.listdir(here))
check(names == ["arr.npy", "arrs.npz", "ckpt.pt", "helper.py", "log-moved.txt", "log.txt", "model.jit",
                "model.safetensors", "notes2.txt", "out", "runs", "train.log", "train.py"], f"listdir: {names}")
globbed = sorted(p.name for p in here.glob("*.txt"))
check(globbed == ["log-moved.txt", "log.txt", "notes2.txt"], f"scandir: {globbed}")
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(1000):
    loss = model(torch.randn(8, 4)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    torch.save(model.state_dict(), here / "ckpt.pt")
"""


def _user_files(project: Project) -> None:
    project.write("log.txt", "the user's log\n")
    project.write("notes.txt", "the user's notes\n")
    project.write("old.txt", "an old file the script deletes\n")
    project.write("ckpt.pt", "the user's precious checkpoint\n")
    (project.dir / "data").mkdir()
    (project.dir / "data" / "a.bin").write_bytes(b"\x00\x01 the user's data")
    project.write("helper.py", "VALUE = 7\n")  # imported: no __pycache__ may appear


def test_every_python_level_write_rename_and_delete_lands_in_scratch(project: Project) -> None:
    _user_files(project)
    project.write("train.py", FILES_SCRIPT)
    before = project.state()

    # CC002 runs the script twice: both runs see their own view, and neither touches the project.
    # The Python-level guard alone (no kernel-level layer under it) covers every one of these writers.
    result = project.run("run", "--steps", "3", "--fail-on", "never", "--protect-files", "python", "--format", "json",
                         "train.py")

    assert result.returncode == ExitCode.OK, result.stderr
    run = json.loads(result.stdout)["run"]
    assert run["status"] == "stopped-at-budget"
    assert run["file_protection"] == "python"
    here = str(project.dir.resolve())
    changes = {(row["op"], row["path"].removeprefix(here + "/")) for row in run["file_changes"]}
    assert {
        ("append", "log.txt"), ("write", "notes.txt"), ("update", "notes.txt"), ("create", "train.log"),
        ("create", "arr.npy"), ("create", "arrs.npz"), ("write", "ckpt.pt"), ("create", "model.jit"),
        ("create", "model.safetensors"), ("mkdir", "runs"), ("delete", "old.txt"), ("delete-tree", "data"),
        ("mkdir", "out"), ("mkdir", "out/sub"), ("create", "out/sub/x.json"), ("rename", "notes2.txt"),
        ("rename-from", "notes.txt"), ("create", "log-copy.txt"), ("rename", "log-moved.txt"),
    } <= changes
    # Changes to what the run itself created (the moved copy's size and mode) are no change to the user's.
    assert not {op for op, path in changes if path == "log-moved.txt"} & {"truncate", "chmod", "utime"}
    assert all(row["to"] is None for row in run["file_changes"] if row["op"].startswith("delete"))
    assert all("/scratch/files/" in row["to"] for row in run["file_changes"] if row["op"] in ("append", "create"))
    log = next(row for row in run["file_changes"] if row["op"] == "append" and row["path"].endswith("log.txt"))
    assert (log["file"], log["line"]) == (str(project.dir / "train.py"), 14)
    project.assert_clean(before)


def test_text_report_lists_each_change_and_where_it_went(project: Project) -> None:
    project.write("log.txt", "the user's log\n")
    project.write("train.py", """
        import torch
        open("log.txt", "a").write("run\\n")
    """, loop=True)
    before = project.state()

    result = project.run("run", "--steps", "2", "--ignore", "CC002", "train.py", COLUMNS="400")

    assert result.returncode == ExitCode.OK, result.stderr
    level = ("Python-level guard" if KERNEL_LAYER is not None else
             f"kernel-level overlay on {Path.home().resolve()}, the working folder, "
             "Python-level guard elsewhere")
    assert ("The script changed these paths during the run; the changes went to the run's scratch folder "
            f"(deleted afterwards) and yours were not touched ({level}):") in " ".join(result.stdout.split())
    assert "appended to: log.txt  (train.py:3)" in result.stdout  # under the working folder: relative
    project.assert_clean(before)


def test_ranks_share_one_view_keyed_by_absolute_path(project: Project) -> None:
    import torch

    torch.save({"v": torch.tensor([1.0])}, project.dir / "shared.pt")
    project.write("log.txt", "the user's log\n")
    project.write("train.py", """
        import pathlib, torch, torch.distributed as dist
        here = pathlib.Path(__file__).parent
        dist.init_process_group("gloo")
        rank = dist.get_rank()
        if rank == 0:
            torch.save({"v": torch.tensor([42.0])}, here / "shared.pt")
        dist.barrier()
        if float(torch.load(here / "shared.pt")["v"][0]) != 42.0:
            raise SystemExit(f"rank {rank} did not see rank 0's save")
        with open(here / "log.txt", "a") as fh:
            fh.write(f"rank {rank}\\n")
        dist.barrier()
        lines = (here / "log.txt").read_text().splitlines()
        if sorted(lines) != sorted(["the user's log", "rank 0", "rank 1"]):
            raise SystemExit(f"rank {rank} saw {lines}")
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for step in range(1000):
            loss = model(torch.randn(8, 4)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    """)
    before = project.state()

    result = project.run("run", "--nproc-per-node", "2", "--steps", "2", "--ignore", "CC002", "--fail-on", "never",
                         "--format", "json", "train.py")

    assert result.returncode == ExitCode.OK, result.stderr
    assert json.loads(result.stdout)["run"]["status"] == "stopped-at-budget"
    project.assert_clean(before)


def test_files_the_run_creates_in_the_temp_folder_pass_through_but_existing_ones_are_guarded(
    project: Project,
) -> None:
    (project.tmp / "someone-elses.txt").write_text("not the run's\n")
    project.write("train.py", """
        import os, tempfile, torch
        with open(os.path.join(tempfile.gettempdir(), "someone-elses.txt"), "a") as fh:
            fh.write("appended\\n")
        fd, path = tempfile.mkstemp()
        os.write(fd, b"the run's own temp file")
        os.close(fd)
        with open(path) as fh:
            assert fh.read() == "the run's own temp file"
        os.remove(path)
        with tempfile.TemporaryFile() as fh, tempfile.NamedTemporaryFile() as named:
            fh.write(b"unnamed")
            named.write(b"named")
        with tempfile.TemporaryDirectory() as folder:
            open(os.path.join(folder, "x"), "w").close()
    """, loop=True)
    before = project.state()

    result = project.run("run", "--steps", "2", "--ignore", "CC002", "--format", "json", "train.py")

    assert result.returncode == ExitCode.OK, result.stderr
    assert (project.tmp / "someone-elses.txt").read_text() == "not the run's\n"
    changes = [(row["op"], Path(row["path"]).name) for row in json.loads(result.stdout)["run"]["file_changes"]]
    assert changes == [("append", "someone-elses.txt")]
    project.assert_clean(before)


# --------------------------------------------------------------------------- the kernel-level layer


NATIVE_WRITERS = """
import subprocess, torch
# A shell is not Python: nothing it does passes through the Python-level guard.
subprocess.run("echo native > notes.txt; echo more >> log.txt; rm old.txt; rm -r data; mkdir made; "
               "echo x > made/y.bin", shell=True, check=True)
if open("notes.txt").read() != "native\\n" or open("log.txt").read() != "the user's log\\nmore\\n":
    raise SystemExit("the run's view is wrong after native writes")
"""


@needs_kernel_layer
def test_writers_outside_python_are_caught_by_the_kernel_layer(project: Project) -> None:
    _user_files(project)
    project.write("train.py", NATIVE_WRITERS, loop=True)
    before = project.state()

    result = project.run("run", "--steps", "2", "--fail-on", "never", "--format", "json", "train.py")

    assert result.returncode == ExitCode.OK, result.stderr
    run = json.loads(result.stdout)["run"]
    assert run["file_protection"] == "kernel"
    assert str(project.dir) in run["protected_folders"]
    changes = {(row["op"], Path(row["path"]).relative_to(project.dir).as_posix()) for row in run["file_changes"]
               if row.get("level") == "kernel"}
    assert changes == {("write", "notes.txt"), ("write", "log.txt"), ("delete", "old.txt"), ("delete", "data"),
                       ("mkdir", "made"), ("create", "made/y.bin")}
    project.assert_clean(before)


@needs_kernel_layer
def test_the_text_report_says_which_level_caught_what(project: Project) -> None:
    _user_files(project)
    project.write("train.py", NATIVE_WRITERS, loop=True)

    result = project.run("run", "--steps", "2", "--ignore", "CC002", "train.py", COLUMNS="200")

    assert result.returncode == ExitCode.OK, result.stderr
    assert f"(kernel-level overlay on {Path.home().resolve()}, the working folder, Python-level guard elsewhere)" \
        in " ".join(result.stdout.split())
    assert "deleted: old.txt  (outside Python: caught by the kernel-level layer)" in result.stdout


def test_with_the_python_level_guard_only_a_shell_reaches_the_folder(project: Project) -> None:
    # What the README says is not guarded without the kernel-level layer, proven.
    _user_files(project)
    project.write("train.py", NATIVE_WRITERS, loop=True)

    result = project.run("run", "--steps", "2", "--ignore", "CC002", "--protect-files", "python", "--format",
                         "json", "train.py")

    assert result.returncode == ExitCode.OK, result.stderr
    run = json.loads(result.stdout)["run"]
    assert (run["file_protection"], run["protected_folders"]) == ("python", [])
    assert (project.dir / "notes.txt").read_text() == "native\n"
    assert not (project.dir / "old.txt").exists()


@needs_kernel_layer
def test_a_trace_folder_inside_the_project_is_written_and_the_rest_protected(project: Project) -> None:
    _user_files(project)
    project.write("train.py", NATIVE_WRITERS, loop=True)
    before = project.state()

    result = project.run("run", "--steps", "2", "--ignore", "CC002", "--trace-dir", "traces", "--format", "json",
                         "train.py")

    assert result.returncode == ExitCode.OK, result.stderr
    assert json.loads(result.stdout)["run"]["file_protection"] == "kernel"
    assert list((project.dir / "traces" / "trace").glob("trace-*.jsonl"))
    after = {k: v for k, v in project.state().items() if not k.startswith("traces")}
    assert after == before
    assert list(project.tmp.glob("convcheck-run-*")) == []


# --------------------------------------------------------------------------- every process gone

ESCAPING_CHILDREN = """
import subprocess, sys, time, torch

token = sys.argv[1]
sleep = "import time; time.sleep(600)"
subprocess.Popen([sys.executable, "-c", sleep, token], start_new_session=True)
subprocess.Popen([sys.executable, "-c", "import os, time; os.setsid(); time.sleep(600)", token])
subprocess.Popen([sys.executable, "-c", sleep, token], process_group=0)
"""
#: Its parent exits at once and it clears its environment: only the subreaper still finds it.
CLEARED_CHILD = """
subprocess.Popen([sys.executable, "-c", "import subprocess, sys; "
                  f"subprocess.Popen([sys.executable, '-c', {sleep!r}, {token!r}], start_new_session=True, env={{}})"
                  ]).wait()
"""


def test_children_that_left_the_session_are_stopped_at_the_end(project: Project) -> None:
    project.write("train.py", ESCAPING_CHILDREN + CLEARED_CHILD + TRAIN_LOOP)
    before = project.state()

    result = project.run("run", "--steps", "3", "--ignore", "CC002", "train.py", project.dir)

    assert result.returncode == ExitCode.OK, result.stderr
    project.assert_clean(before)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signals_stop_every_process(project: Project, signum: int) -> None:
    project.write("train.py", ESCAPING_CHILDREN + CLEARED_CHILD + TRAIN_LOOP.replace("range(1000)", "iter(int, 1)")
                  + "    time.sleep(0.01)\n")
    before = project.state()
    proc = project.start("run", "--steps", "1000000", "--ignore", "CC002", "train.py", project.dir)
    wait_for(lambda: len(processes_running(f"time.sleep(600) {project.dir}")) >= 4)

    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)

    assert proc.returncode == ExitCode.INTERRUPTED
    assert "convcheck: Interrupted: every process the run started was stopped." in stderr
    project.assert_clean(before)


def test_after_sigkill_the_next_run_cleans_up(project: Project) -> None:
    # Found by the run's environment they kept, or (with the kernel-level layer) by the run's mount
    # namespace, which a process that cleared its environment and left the session is still in.
    cleared = CLEARED_CHILD if KERNEL_LAYER is None else ""
    project.write("train.py", ESCAPING_CHILDREN + cleared + TRAIN_LOOP.replace("range(1000)", "iter(int, 1)")
                  + "    time.sleep(0.01)\n")
    project.write("ok.py", "import torch\n" + TRAIN_LOOP)
    before = project.state()
    proc = project.start("run", "--steps", "1000000", "--ignore", "CC002", "train.py", project.dir)
    wait_for(lambda: len(processes_running(f"time.sleep(600) {project.dir}")) >= (3 if cleared else 4))

    proc.kill()
    proc.communicate(timeout=30)
    # The workers die with convcheck (their death signal); what left their session stays behind.
    wait_for(lambda: not processes_running(f"convcheck.runtime.worker {project.dir}"), timeout=30)
    assert processes_running(f"time.sleep(600) {project.dir}")
    assert len(list(project.tmp.glob("convcheck-run-*"))) == 1

    result = project.run("run", "--steps", "1", "--ignore", "CC002", "ok.py")

    assert result.returncode == ExitCode.OK, result.stderr
    project.assert_clean(before)


# --------------------------------------------------------------------------- nothing leaks


def test_other_interpreters_started_by_the_script_see_nothing_of_the_run(project: Project) -> None:
    project.write("train.py", """
        import subprocess, sys, torch
        # The base interpreter of this virtual environment cannot import convcheck.
        out = subprocess.run([sys._base_executable, "-c", "print('ok')"], capture_output=True, text=True)
        if (out.returncode, out.stdout, out.stderr) != (0, "ok\\n", ""):
            raise SystemExit(f"another interpreter was disturbed: {out!r}")
    """, loop=True)
    before = project.state()

    result = project.run("run", "--steps", "2", "--ignore", "CC002", "--format", "json", "train.py")

    assert result.returncode == ExitCode.OK, result.stderr
    project.assert_clean(before)


def test_a_process_that_outlives_its_run_is_not_disturbed(tmp_path: Path) -> None:
    gone = tmp_path / "convcheck-run-gone"
    env = dict(os.environ, PYTHONPATH=site_dir(), CONVCHECK_TRACE_DIR=str(gone / "trace"),
               CONVCHECK_SCRATCH_DIR=str(gone / "scratch"))
    (tmp_path / "out.txt").write_text("before\n")

    proc = subprocess.run(
        [sys.executable, "-c", "import torch; open('out.txt', 'w').write('after'); print('ok')"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )

    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "ok\n", "")
    assert (tmp_path / "out.txt").read_text() == "after"  # no run to protect it for: an ordinary process
    assert not gone.exists()


# --------------------------------------------------------------------------- crashes told truly


@pytest.mark.parametrize("how, said", [("os._exit(7)", "the script exited with code 7"),
                                       ("os.kill(os.getpid(), signal.SIGKILL)", "the script was killed by signal 9")])
def test_a_hard_death_after_four_steps_keeps_its_four_steps(project: Project, how: str, said: str) -> None:
    project.write("train.py", f"""
        import os, signal, torch
        model = torch.nn.Linear(4, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for step in range(1000):
            loss = model(torch.randn(8, 4)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step == 3:
                {how}
    """)
    before = project.state()

    result = project.run("run", "--steps", "10", "--ignore", "CC002", "--format", "json", "train.py")

    assert result.returncode == ExitCode.CRASHED, result.stderr
    run = json.loads(result.stdout)["run"]
    assert run["status"] == "crashed"
    assert run["error"].splitlines()[0] == said
    assert [p["steps"] for p in run["processes"]] == [4]
    project.assert_clean(before)


def test_ddp_names_the_rank_that_died_first(project: Project) -> None:
    project.write("train.py", """
        import os, torch, torch.distributed as dist
        dist.init_process_group("gloo")
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for step in range(1000):
            loss = model(torch.randn(8, 4)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if dist.get_rank() == 1 and step == 1:
                os._exit(1)
    """)
    before = project.state()

    result = project.run("run", "--nproc-per-node", "2", "--steps", "10", "--ignore", "CC002", "--format", "json",
                         "train.py")

    assert result.returncode == ExitCode.CRASHED, result.stderr
    run = json.loads(result.stdout)["run"]
    assert run["error"].splitlines()[0] == "rank 1 exited with code 1"
    assert run["error"].splitlines()[-1] == "(rank 1 failed first; rank 0 failed after it, when it lost its peer.)"
    assert sorted((p["rank"], p["steps"]) for p in run["processes"]) == [(0, 2), (1, 2)]
    project.assert_clean(before)


def test_a_swallowed_stop_is_enforced_at_the_next_backward(project: Project) -> None:
    project.write("train.py", """
        import torch
        model = torch.nn.Linear(4, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        try:
            for step in range(1000):
                loss = model(torch.randn(8, 4)).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        except BaseException:
            pass
        while True:  # forward and backward, never another optimizer.step()
            model(torch.randn(8, 4)).pow(2).mean().backward()
    """)
    before = project.state()

    result = project.run("run", "--steps", "3", "--timeout", "200", "--ignore", "CC002", "--format", "json",
                         "train.py")

    assert result.returncode == ExitCode.OK, result.stderr
    run = json.loads(result.stdout)["run"]
    assert run["status"] == "stopped-at-budget"
    assert [p["steps"] for p in run["processes"]] == [3]
    project.assert_clean(before)


def test_a_timeout_before_the_first_line_of_the_script_says_so(project: Project) -> None:
    slow = project.tmp / "slowsite"
    slow.mkdir()
    # A slow start-up (here a sitecustomize that dawdles, in the run's processes only).
    (slow / "sitecustomize.py").write_text(
        "import os, time\nif os.environ.get('CONVCHECK_TRACE_DIR'):\n    time.sleep(600)\n")
    project.write("train.py", "import torch\n" + TRAIN_LOOP)
    before = project.state()

    result = project.run("run", "--timeout", "2", "--ignore", "CC002", "train.py", PYTHONPATH=str(slow))

    assert result.returncode == ExitCode.TIMEOUT, result.stderr
    assert ("The run hit --timeout 2 s before the script's first line ran: starting Python and convcheck's probe "
            "took all of it (a busy or slow machine). Nothing of the script was run; give a longer --timeout."
            ) in " ".join(result.stdout.split())
    project.assert_clean(before)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_script_that_is_not_a_regular_file_is_refused(project: Project, kind: str) -> None:
    if kind == "fifo":
        script = project.dir / "train.py"
        os.mkfifo(script)
    else:
        script = Path("/dev/zero")
    before = project.state()

    result = project.run("run", script, timeout=60)

    assert result.returncode == ExitCode.CANNOT_RUN
    assert result.stderr == (f"convcheck: {script} is not a regular file (a pipe, socket or device). "
                             "Give the path of a Python training script (a .py file).\n")
    project.assert_clean(before)


def test_a_baseline_that_is_not_utf8_is_refused_before_anything_runs(project: Project) -> None:
    (project.dir / "baseline.json").write_bytes(b"\xff\xfe not text")
    marker = project.tmp / "the-script-ran"
    project.write("train.py", f"import torch\nopen({str(marker)!r}, 'w').close()\n" + TRAIN_LOOP)
    before = project.state()

    result = project.run("run", "--baseline", "baseline.json", "train.py")

    assert result.returncode == ExitCode.CANNOT_RUN
    assert result.stderr == ("convcheck: --baseline baseline.json: not a convcheck baseline "
                             "(not UTF-8 text: invalid start byte).\n")
    assert not marker.exists()
    project.assert_clean(before)


@pytest.mark.parametrize("setting, said", [
    ("steps = true", "steps must be a whole number (got True)"),
    ("timeout = true", "timeout must be a number (got True)"),
    ('steps = "10"', "steps must be a whole number (got '10')"),
    ("steps = 10.0", "steps must be a whole number (got 10.0)"),
    ('protect-files = "yes"', "protect-files must be 'auto', 'kernel' or 'python' (got 'yes')"),
    ('[tool.convcheck.per-file-ignores]\n"*.py" = ["CC999"]',
     "per-file-ignores names unknown check(s) 'CC999'; give codes or names that `convcheck rules` lists, or \"*\""),
])
def test_config_types_are_strict(project: Project, setting: str, said: str) -> None:
    project.write("pyproject.toml", f"[tool.convcheck]\n{setting}\n")
    project.write("train.py", "import torch\n" + TRAIN_LOOP)
    before = project.state()

    result = project.run("run", "train.py")

    assert result.returncode == ExitCode.CANNOT_RUN
    assert result.stderr == f"convcheck: {project.dir / 'pyproject.toml'}: [tool.convcheck] is invalid: {said}.\n"
    project.assert_clean(before)


def test_a_damaged_trace_folder_is_analysed_without_the_damaged_parts(project: Project) -> None:
    project.write("train.py", "import torch\n" + TRAIN_LOOP)
    traces = project.tmp / "kept"
    ran = project.run("run", "--steps", "3", "--ignore", "CC002", "--trace-dir", traces, "train.py")
    assert ran.returncode == ExitCode.OK, ran.stderr
    folder = traces / "trace"
    (trace,) = folder.glob("trace-*.jsonl")
    good_lines = len(trace.read_text().splitlines())
    with trace.open("a") as fh:
        fh.write('42\n[1, 2]\n{"n": 3}\n{"ev": "step", "n": "x"}\n{"ev": "backward", "n": 9, "loss": "abc"}\n')
        fh.write('{"ev": "note"}\n{"ev": "set_epoch", "id": 0, "epoch": 1, "loc": ["train.py", "7"]}\n')
        fh.write('{"ev": "end", "status": "exited", "steps": 3}\n')
    (folder / "trace-host-notapid.jsonl").write_text('{"ev": "step"}\n')
    (folder / "trace-host-77.jsonl").mkdir()
    (folder / "exit-host-12.json").write_text("[1]")
    before = project.state()

    result = project.run("report", "--trace-dir", folder, "--fail-on", "never", "--format", "json", "train.py")

    assert result.returncode == ExitCode.OK, result.stderr
    n = good_lines
    assert result.stderr.splitlines() == [
        f"convcheck: warning: {folder}/trace-host-77.jsonl: cannot be read (Is a directory); left out",
        f"convcheck: warning: {folder}/trace-host-notapid.jsonl: not named trace-<host>-<pid>.jsonl; the file was left out",
        f"convcheck: warning: {folder}/{trace.name}:{n + 1}: not a JSON object but int; the line was left out",
        f"convcheck: warning: {folder}/{trace.name}:{n + 2}: not a JSON object but list; the line was left out",
        f"convcheck: warning: {folder}/{trace.name}:{n + 3}: an event without its kind ('ev'); the line was left out",
        f"convcheck: warning: {folder}/{trace.name}:{n + 4}: field 'n' is str, not int; the line was left out",
        f"convcheck: warning: {folder}/{trace.name}:{n + 5}: field 'loss' is str, not float or None; "
        "the line was left out",
        f"convcheck: warning: {folder}/{trace.name}:{n + 7}: field 'loc' is not [file, line] or None: "
        "['train.py', '7']; the line was left out",
        f"convcheck: warning: {folder}/{trace.name}:{n + 8}: an event of kind 'end' without its field 'backwards'; "
        "the line was left out",
    ]
    assert json.loads(result.stdout)["run"]["status"] == "stopped-at-budget"
    project.assert_clean(before)


def test_real_traces_are_never_called_damaged(project: Project) -> None:
    # A DDP + AMP + checkpoint run writes every kind of event the probe has: none may be rejected.
    traces = project.tmp / "kept"
    script = REPO / "tests" / "scripts" / "cuda_ddp_amp.py"
    result = project.run("run", "--steps", "4", "--ignore", "CC002", "--nproc-per-node", "2", "--fail-on", "never",
                         "--trace-dir", traces, script)
    assert result.returncode == ExitCode.OK, result.stderr
    lines = [line for path in (traces / "trace").glob("trace-*.jsonl") for line in path.read_text().splitlines()]
    assert len(lines) > 50
    assert [(line, event_problem(json.loads(line))) for line in lines if event_problem(json.loads(line))] == []


def _safetensors_file(path: Path, mutate=None) -> None:  # noqa: ANN001
    header = {"__metadata__": {"format": "pt"},
              "module.w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
              "module.b": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]}}
    if mutate is not None:
        mutate(header)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + bytes(range(24)))


@pytest.mark.parametrize("mutate, said", [
    (lambda h: h["module.w"].update(shape=["a", 2]), "'module.w' has shape ['a', 2], not a list of non-negative integers"),
    (lambda h: h["module.w"].update(data_offsets=[0]), "'module.w' has data_offsets [0], not two non-negative integers"),
    (lambda h: h["module.w"].update(dtype="XYZ"), "'module.w' has dtype 'XYZ', which is not a safetensors dtype"),
    (lambda h: h["module.w"].update(dtype=123), "'module.w' has dtype 123, which is not a safetensors dtype"),
    (lambda h: h.update(__metadata__=[1, 2]), "its __metadata__ is not an object of strings"),
    (lambda h: h["module.b"].update(data_offsets=[17, 25]),
     "the data of 'module.b' lies outside the file"),
    (lambda h: h.pop("module.b"), "its tensors cover 16 of the 24 data bytes"),
])
def test_fix_state_dict_refuses_what_safetensors_would_refuse(project: Project, mutate, said: str) -> None:  # noqa: ANN001
    source = project.dir / "ckpt.safetensors"
    _safetensors_file(source, mutate)
    before = project.state()

    result = project.run("fix-state-dict", source, "--output", project.tmp / "out.safetensors", timeout=60)

    assert result.returncode == ExitCode.CANNOT_RUN
    assert result.stderr == (f"convcheck: {source} is not a valid safetensors file: {said} "
                             "(truncated or corrupted?).\n")
    assert list(project.tmp.iterdir()) == []
    project.assert_clean(before)


def test_fix_state_dict_output_loads_with_safetensors(project: Project) -> None:
    from safetensors import safe_open

    source = project.dir / "ckpt.safetensors"
    _safetensors_file(source)
    before = project.state()

    result = project.run("fix-state-dict", source, "--output", project.tmp / "out.safetensors", timeout=60)

    assert result.returncode == ExitCode.OK, result.stderr
    with safe_open(str(project.tmp / "out.safetensors"), framework="np") as handle:
        assert sorted(handle.keys()) == ["b", "w"]
        assert handle.metadata() == {"format": "pt"}
    project.assert_clean(before)


@pytest.mark.parametrize("mode, signum", [("--in-place", signal.SIGTERM), ("--in-place", signal.SIGHUP),
                                           ("--in-place", signal.SIGINT), ("--output", signal.SIGTERM)])
def test_fix_state_dict_killed_mid_write_leaves_nothing(project: Project, mode: str, signum: int) -> None:
    source = project.dir / "big.safetensors"
    count = 400 * 1024 * 1024 // 4  # large enough to be caught mid-write; sparse, so cheap to make
    encoded = json.dumps({"module.w": {"dtype": "F32", "shape": [count], "data_offsets": [0, count * 4]}}).encode()
    encoded += b" " * (-len(encoded) % 8)
    with source.open("wb") as fh:
        fh.write(struct.pack("<Q", len(encoded)) + encoded)
        fh.truncate(8 + len(encoded) + count * 4)
    out = project.dir / "out.safetensors"
    before = project.state()
    proc = subprocess.Popen(
        [sys.executable, "-m", "convcheck", "fix-state-dict", source, *([mode] if mode == "--in-place" else [mode, out])],
        cwd=project.dir, env=project.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=sigint_as_from_a_terminal,
    )
    wait_for(lambda: any(p.name.endswith(".partial") for p in project.dir.iterdir()), timeout=60)

    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)

    assert proc.returncode == ExitCode.INTERRUPTED
    assert stderr == (f"convcheck: Interrupted: nothing was written (the partly written file was removed) and "
                      f"{source} is unchanged.\n")
    project.assert_clean(before)  # no .partial, no FILE.bak, no output
