"""Workers forked from one process that imported torch: each must start as a fresh process would."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cc_testing import SCRIPTS, convcheck, read_traces, sigint_as_from_a_terminal

from convcheck.runtime import forkserver

pytestmark = pytest.mark.skipif(not forkserver.usable(), reason="workers are forked on Linux only")


def _states(stdout: str) -> list[dict[str, str]]:
    rows = []
    for line in stdout.splitlines():
        if line.startswith("STATE "):
            rows.append(dict(item.split("=", 1) for item in line.split()[1:]))
    return sorted(rows, key=lambda row: row["rank"])


def _run(tmp_path: Path, *options: str) -> list[dict[str, str]]:
    result = convcheck("run", "--show-output", "--select", "CC004", "--nproc-per-node", "2", "--steps", "3",
                       *options, SCRIPTS / "ddp_fresh_state.py", cwd=tmp_path)
    assert result.code == 0, result.stderr
    states = _states(result.stdout)
    assert [s["rank"] for s in states] == ["0", "1"], result.stdout
    return states


def test_the_ranks_of_a_run_are_forked_from_one_process_that_imported_torch(tmp_path: Path) -> None:
    states = _run(tmp_path)
    assert all(s["preloaded"] == "True" for s in states)
    assert states[0]["parent"] == states[1]["parent"]


def test_a_forked_rank_starts_as_a_fresh_process_would(tmp_path: Path) -> None:
    states = _run(tmp_path)
    for state in states:
        assert state["env_rank"] == state["rank"] == state["local_rank"]
        assert state["session_leader"] == "True"
        assert state["stdin_empty"] == "True"
        assert state["cwd"] == str(tmp_path)
    # Each rank seeds its RNGs from the OS, as a new process does: a fork alone would copy one state.
    for rng in ("torch_seed", "numpy", "python"):
        assert states[0][rng] != states[1][rng], rng


@pytest.mark.slow
def test_spawn_starts_a_fresh_interpreter_for_each_rank(tmp_path: Path) -> None:
    states = _run(tmp_path, "--start-method", "spawn")
    assert all(s["preloaded"] == "False" for s in states)
    for rng in ("torch_seed", "numpy", "python", "hash"):
        assert states[0][rng] != states[1][rng], rng


@pytest.mark.slow
def test_the_repeat_run_has_its_own_server_and_so_its_own_hash_seed(tmp_path: Path) -> None:
    # The ranks of one run share Python's string-hash seed (a documented limit); two runs must not,
    # or CC002 could not see a script whose result depends on set order.
    script = tmp_path / "set_order.py"
    script.write_text(textwrap.dedent("""
        import torch
        import torch.distributed as dist
        import torch.nn as nn

        torch.manual_seed(0)
        dist.init_process_group("gloo")
        words = list({"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"})
        model = nn.parallel.DistributedDataParallel(nn.Embedding(8, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(4):
            ids = torch.tensor([words.index("alpha"), words.index("beta")])
            loss = model(ids).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    """))
    # Nothing in one run says its seeding is in doubt: on a machine the ranks fill, only this makes the repeat.
    (tmp_path / "pyproject.toml").write_text("[tool.convcheck.checks.CC002]\nrepeat-always = true\n")
    found = set()
    for _ in range(3):  # one chance in 8 that two hash seeds put "alpha" and "beta" where they were
        result = convcheck("run", "--select", "CC002", "--format", "json", "--nproc-per-node", "2", "--steps", "4",
                           script, cwd=tmp_path)
        assert result.code in (0, 1), result.stderr
        found |= {f["code"] for f in result.report["findings"]}
        if "CC002" in found:
            break
    assert "CC002" in found


def _server_script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "drive.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_a_server_that_cannot_start_leaves_the_launch_to_fresh_interpreters(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(textwrap.dedent("""
        import torch
        model = torch.nn.Linear(2, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(2):
            loss = model(torch.randn(4, 2)).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    """))
    drive = _server_script(tmp_path, f"""
        from pathlib import Path
        from convcheck.runtime import forkserver, launcher

        class Broken(forkserver.ForkServer):
            def __init__(self, python, environ, stdout, stderr):
                super().__init__("/bin/false", environ, stdout, stderr)

        launcher.forkserver.ForkServer = Broken
        spec = launcher.LaunchSpec(script=Path({str(tmp_path / 'train.py')!r}), script_args=[],
                                   run_dir=Path({str(tmp_path / 'run')!r}), steps=2, timeout=120,
                                   nproc_per_node=2, protect_files="python")
        result = launcher.launch(spec)
        print("CODES", [w.returncode for w in result.workers])
        print("STEPS", [w.outcome.get("steps") for w in result.workers])
    """)
    proc = subprocess.run([sys.executable, drive], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "CODES [0, 0]" in proc.stdout
    assert "STEPS [2, 2]" in proc.stdout


def test_the_server_reports_how_each_worker_ended(tmp_path: Path) -> None:
    drive = _server_script(tmp_path, """
        import os, signal, sys, time
        from convcheck.runtime import forkserver

        out = open("out.txt", "wb")
        server = forkserver.ForkServer(sys.executable, dict(os.environ), out, out)
        null = os.open(os.devnull, os.O_RDONLY)
        workers = {}
        for name, code in (("ok", "print('hello', flush=True)"), ("three", "raise SystemExit(3)"),
                           ("sleeps", "import time; time.sleep(60)")):
            with open(name + ".py", "w") as script:
                script.write(code)
            pid = server.start([name + ".py"], dict(os.environ), os.getcwd(), [null, out.fileno(), out.fileno()])
            workers[name] = forkserver.ForkedWorker(server, pid)
        workers["ok"].wait(60)
        workers["three"].wait(60)
        os.kill(workers["sleeps"].pid, signal.SIGKILL)
        workers["sleeps"].wait(60)
        print("CODES", workers["ok"].returncode, workers["three"].returncode, workers["sleeps"].returncode)
        server.close()
        out.close()
        print("OUT", open("out.txt").read().split())
    """)
    proc = subprocess.run([sys.executable, drive], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "CODES 0 3 -9" in proc.stdout
    assert "'hello'" in proc.stdout


def test_a_server_that_is_gone_refuses_to_start_a_worker(tmp_path: Path) -> None:
    with open(tmp_path / "out.txt", "wb") as out:
        server = forkserver.ForkServer("/bin/false", dict(os.environ), out, out)
        null = os.open(os.devnull, os.O_RDONLY)
        try:
            with pytest.raises(forkserver.ServerGone):
                server.start(["x.py"], dict(os.environ), str(tmp_path), [null, out.fileno(), out.fileno()])
        finally:
            os.close(null)
            server.close()


def test_the_runs_beside_the_main_run_share_one_server_of_their_own(tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    script = tmp_path / "ddp_fresh_state.py"
    script.write_text((SCRIPTS / "ddp_fresh_state.py").read_text())
    # Beside the main run whatever the cores: a repeat made after it would not share the one-process run's server.
    (tmp_path / "pyproject.toml").write_text("[tool.convcheck.checks.CC002]\nrepeat-always = true\n")
    result = convcheck("run", "--format", "json", "--nproc-per-node", "2", "--steps", "6", "--trace-dir", traces,
                       script, cwd=tmp_path)
    assert result.code in (0, 1), result.stderr

    def parents(folder: Path) -> dict[int, int]:
        """Parent pid of each process that trained, by its rank."""
        found = {}
        for path in (folder / "trace").glob("trace-*.jsonl"):
            lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            if any(e.get("ev") == "step" for e in lines):
                found[lines[0]["rank"] or 0] = lines[0]["ppid"]
        return found

    main = parents(traces)
    repeat = parents(traces / "variants" / "repeat")
    alone = parents(traces / "variants" / "world-size-1")
    assert sorted(main) == sorted(repeat) == [0, 1] and list(alone) == [0]
    assert len(set(main.values())) == 1 and len(set(repeat.values())) == 1
    # CC002's repeat and CC005's one-process run come from one server; the main run has its own.
    assert set(repeat.values()) == set(alone.values()) != set(main.values())
    # The one-step run ended long before the repeat: stopping it left the shared server serving.
    assert all(p["steps"] == 3 for p in result.report["run"]["processes"])
    assert sorted(p.name for p in (traces / "variants").iterdir()) == ["repeat", "world-size-1"]
    assert result.report["run"]["worker_start"] == "forkserver"
    # Each rank's probe wrote its header as a fresh worker's does: the entry process, the script's argv.
    for path in (traces / "trace").glob("trace-*.jsonl"):
        header = json.loads(path.read_text().splitlines()[0])
        assert (header["role"], header["argv"]) == ("entry", [str(script)])


@pytest.mark.slow
def test_a_worker_of_the_shared_server_writes_into_its_own_runs_copy(tmp_path: Path) -> None:
    # The Python-level guard alone: the server's guard served another folder than the worker's run.
    script = tmp_path / "writes.py"
    script.write_text(textwrap.dedent("""
        import os
        import torch
        import torch.distributed as dist

        dist.init_process_group("gloo")
        with open(f"written-by-world-{os.environ['WORLD_SIZE']}-rank-{os.environ['RANK']}.txt", "w") as out:
            out.write("from the run")
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(2):
            loss = model(torch.randn(4, 2)).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    """))
    before = sorted(p.name for p in tmp_path.iterdir())
    result = convcheck("run", "--protect-files", "python", "--format", "json", "--nproc-per-node", "2",
                       "--steps", "2", script, cwd=tmp_path)
    assert result.code in (0, 1), result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    written = {Path(row["path"]).name for row in result.report["run"]["file_changes"]}
    assert {"written-by-world-2-rank-0.txt", "written-by-world-2-rank-1.txt",
            "written-by-world-1-rank-0.txt"} <= written


def test_the_server_never_touches_cuda_before_it_forks() -> None:
    # CUDA initialised in a parent cannot be used in its forked children.
    code = """
import torch
calls = []
for name in ("is_available", "device_count", "init", "_lazy_init", "current_device", "get_device_properties"):
    setattr(torch.cuda, name, lambda *a, _name=name, **k: calls.append(_name))
from convcheck.runtime import forkserver
forkserver._preload()
import torch._dynamo
assert torch.cuda.is_initialized() is False
print("CALLS", calls)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "CALLS []" in out.stdout


def _processes_of_run(trace_dir: Path) -> list[int]:
    """Live processes whose environment names this run's folder (forked workers carry their server's)."""
    found = []
    wanted = str(trace_dir).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            status = (entry / "status").read_text()
        except OSError:
            continue
        if wanted in environ and "State:\tZ" not in status:
            found.append(int(entry.name))
    return found


_HANGS = """
        import time
        import torch
        import torch.distributed as dist

        dist.init_process_group("gloo")
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        loss = model(torch.randn(4, 2)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        while True:
            time.sleep(0.1)  # stuck here
"""


@pytest.mark.slow
def test_ctrl_c_stops_forked_ranks_and_their_server(tmp_path: Path) -> None:
    script = tmp_path / "hangs.py"
    script.write_text(textwrap.dedent(_HANGS))
    traces = tmp_path / "traces"
    proc = subprocess.Popen(
        [sys.executable, "-m", "convcheck", "run", "--nproc-per-node", "2", "--timeout", "600", "--trace-dir",
         traces, script], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=sigint_as_from_a_terminal,
    )
    try:
        deadline = time.monotonic() + 300  # only a bound against a run that never starts
        while len(list((traces / "trace").glob("begun-*"))) < 2 or not _stepped(traces, 2):
            assert time.monotonic() < deadline and proc.poll() is None, "the ranks never reached their loop"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err
    assert _processes_of_run(traces) == []


def _stepped(traces: Path, ranks: int) -> bool:
    """Have ``ranks`` processes of the main run written their first step?"""
    count = 0
    for path in (traces / "trace").glob("trace-*.jsonl"):
        if '"ev": "step"' in path.read_text():
            count += 1
    return count >= ranks


@pytest.mark.slow
def test_forked_ranks_that_hang_are_located_and_stopped_at_the_timeout(tmp_path: Path) -> None:
    script = tmp_path / "hangs.py"
    script.write_text(textwrap.dedent(_HANGS))
    traces = tmp_path / "traces"
    # A busy machine can use up a short timeout before the first step: then again with a longer one.
    for timeout in ("20", "90", "240"):
        shutil.rmtree(traces, ignore_errors=True)
        result = convcheck("run", "--ignore", "CC002", "--nproc-per-node", "2", "--timeout", timeout, "--format",
                           "json", "--trace-dir", traces, script, cwd=tmp_path)
        if result.code == 4 and all(p["steps"] == 1 for p in result.report["run"]["processes"]):
            break
    assert result.code == 4, result.stderr
    run = result.report["run"]
    assert run["status"] == "timeout"
    assert len(run["hung_at"]) == 2 and all('hangs.py", line 14' in where for where in run["hung_at"])
    assert _processes_of_run(traces) == []


@pytest.mark.slow
def test_a_forked_rank_spawns_dataloader_workers_that_are_probed_and_stopped(tmp_path: Path) -> None:
    script = tmp_path / "spawning_loader.py"
    script.write_text(textwrap.dedent("""
        import torch
        import torch.distributed as dist
        import torch.nn as nn
        from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


        def main():
            torch.manual_seed(0)
            dist.init_process_group("gloo")
            data = TensorDataset(torch.randn(256, 8), torch.randint(0, 2, (256,)))
            sampler = DistributedSampler(data, seed=0)
            loader = DataLoader(data, batch_size=16, sampler=sampler, num_workers=1, multiprocessing_context="spawn")
            model = nn.parallel.DistributedDataParallel(nn.Linear(8, 2))
            opt = torch.optim.SGD(model.parameters(), lr=0.1 * dist.get_world_size())
            for epoch in range(3):
                sampler.set_epoch(epoch)
                for x, y in loader:
                    loss = nn.functional.cross_entropy(model(x), y)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()


        if __name__ == "__main__":
            main()
    """))
    traces = tmp_path / "traces"
    result = convcheck("run", "--ignore", "CC002", "--nproc-per-node", "2", "--steps", "4", "--max-batches-per-epoch",
                       "0", "--format", "json", "--trace-dir", traces, script, cwd=tmp_path)
    assert result.code == 0, result.stderr
    run = result.report["run"]
    assert (run["status"], run["worker_start"]) == ("stopped-at-budget", "forkserver")
    assert sorted((p["rank"], p["steps"]) for p in run["processes"]) == [(0, 4), (1, 4)]
    # Each rank's spawned loader worker loaded the probe as well: one trace each.
    roles = sorted(t[0]["role"] for t in read_traces(traces))
    assert roles == ["child", "child", "entry", "entry"]
    assert _processes_of_run(traces) == []


@pytest.mark.slow
def test_a_forked_rank_runs_a_module_as_python_m_does(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("WIDTH = 4\n")
    (package / "train.py").write_text(textwrap.dedent("""
        import sys
        import torch
        import torch.distributed as dist
        from .helpers import WIDTH

        dist.init_process_group("gloo")
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(WIDTH, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            loss = model(torch.randn(8, WIDTH)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    """))
    traces = tmp_path / "traces"
    result = convcheck("run", "--select", "CC004", "--nproc-per-node", "2", "--steps", "3", "--format", "json",
                       "--trace-dir", traces, "-m", "pkg.train", "--flag", cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert result.report["run"]["worker_start"] == "forkserver"
    headers = [json.loads(p.read_text().splitlines()[0]) for p in (traces / "trace").glob("trace-*.jsonl")]
    assert len(headers) == 2
    assert all((h["role"], h["argv"]) == ("entry", [str(package / "train.py"), "--flag"]) for h in headers)
