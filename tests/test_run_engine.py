"""End-to-end: real scripts through ``convcheck run``, asserting on traces and exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest
from cc_testing import SCRIPTS, convcheck, processes_running, read_traces, sigint_as_from_a_terminal


def _trainers(traces: list[list[dict]]) -> list[list[dict]]:
    return [t for t in traces if any(e["ev"] == "step" for e in t)]


def _kinds(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["ev"] == kind]


def test_single_process_trace_and_user_files_untouched(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(b"the user's precious checkpoint")
    traces = tmp_path / "traces"
    result = convcheck(
        "run", "--ignore", "CC002", "--steps", "7", "--max-batches-per-epoch", "3", "--format", "json", "--trace-dir", traces,
        SCRIPTS / "single.py", "--lr", "0.25", "--ckpt", ckpt,
    )
    assert result.code == 0, result.stderr
    report = result.report
    assert report["run"]["status"] == "stopped-at-budget"
    assert report["run"]["script_argv"] == ["--lr", "0.25", "--ckpt", str(ckpt)]
    assert report["run"]["worker_start"] == "spawn"  # one process: a fresh interpreter, as python starts it
    # The script's torch.save went to the scratch folder, reported, and the user's file is intact.
    assert ckpt.read_bytes() == b"the user's precious checkpoint"
    assert report["run"]["redirected_saves"] == [
        {"path": str(ckpt), "file": str(SCRIPTS / "single.py"), "line": 24}
    ]
    (events,) = _trainers(read_traces(traces))
    steps = _kinds(events, "step")
    assert [s["n"] for s in steps] == list(range(1, 8))
    assert all(s["lrs"] == [0.25] for s in steps)
    assert all(s["grad"] == [0, 1, 2, 3] for s in steps)
    # Norms and changes are measured on the first five steps and every tenth.
    assert [s["changed"] for s in steps if "changed" in s] == [[0, 1, 2, 3]] * 5
    assert all(len(s["grad_norms"]) == 4 and min(s["grad_norms"]) > 0 for s in steps[:5])
    assert steps[0]["loc"] == [str(SCRIPTS / "single.py"), 23]
    backward = _kinds(events, "backward")[0]
    assert backward["loc"] == [str(SCRIPTS / "single.py"), 22]
    assert backward["graph"][0]["name"] == "NllLossBackward0"
    assert backward["graph"][0]["attrs"]["reduction"] == 1  # mean
    assert backward["graph"][0]["attrs"]["self"]["shape"] == [8, 2]
    # Three batches per epoch: epochs 1 and 2 were cut at 3 batches; epoch 3 ended at the budget,
    # in the 8th iteration, whose step was the one not taken.
    epochs = _kinds(events, "loader_epoch")
    assert [(e["epoch"], e["batches"]) for e in epochs] == [(1, 3), (2, 3), (3, 2)]
    assert len(set(epochs[0]["indices"])) == 24
    # CC002 is ignored: its seeding recorder was not installed (tests/test_recorders.py covers it).
    assert _kinds(events, "seed") == []
    model = _kinds(events, "model")[0]
    assert [p["name"] for p in model["params"]] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    saves = _kinds(events, "save")
    assert saves[0]["state_dicts"][0]["keys"] == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_ddp_two_processes_over_gloo(tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    result = convcheck(
        "run", "--ignore", "CC002", "--nproc-per-node", "2", "--steps", "6", "--max-batches-per-epoch", "2", "--format", "json",
        "--trace-dir", traces, SCRIPTS / "ddp_torchrun.py",
    )
    assert result.code == 0, result.stderr
    assert result.report["run"]["status"] == "stopped-at-budget"
    assert sorted(p["rank"] for p in result.report["run"]["processes"]) == [0, 1]
    trainers = _trainers(read_traces(traces))
    assert len(trainers) == 2
    ranks = set()
    for events in trainers:
        (init,) = _kinds(events, "dist_init")
        assert init["backend"] == "gloo" and init["world_size"] == 2
        ranks.add(init["rank"])
        assert len(_kinds(events, "step")) == 6
        (sampler,) = _kinds(events, "sampler")
        assert sampler["cls"] == "DistributedSampler" and sampler["num_replicas"] == 2
        # Epochs 0-2 trained two batches each; epoch 3 began and its first step was the one not taken.
        assert [e["epoch"] for e in _kinds(events, "set_epoch")] == [0, 1, 2, 3]
        assert [e["epoch"] for e in _kinds(events, "sampler_iter")] == [0, 1, 2, 3]
        model = _kinds(events, "model")[0]
        assert model["wrapper"] and model["params"][0]["name"] == "0.weight"
    assert ranks == {0, 1}
    # Each rank drew its own half of the data in epoch 1.
    first = [set(_kinds(t, "loader_epoch")[0]["indices"]) for t in trainers]
    assert first[0] and not first[0] & first[1]


def test_mp_spawn_script_reaches_children(tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    result = convcheck("run", "--ignore", "CC002", "--steps", "5", "--format", "json", "--trace-dir", traces, SCRIPTS / "spawn.py")
    assert result.code == 0, result.stderr
    report = result.report
    assert report["run"]["status"] == "completed"
    children = [p for p in report["run"]["processes"] if p["role"] == "child"]
    assert sorted(p["rank"] for p in children) == [0, 1]
    assert all(p["steps"] == 5 for p in children)
    trainers = _trainers(read_traces(traces))
    assert sorted(_kinds(t, "dist_init")[0]["rank"] for t in trainers) == [0, 1]
    assert all(_kinds(t, "process")[0]["role"] == "child" for t in trainers)


def test_endless_loop_inside_except_exception_is_stopped(tmp_path: Path) -> None:
    result = convcheck("run", "--ignore", "CC002", "--steps", "4", "--format", "json", SCRIPTS / "endless.py")
    assert result.code == 0, result.stderr
    assert result.report["run"]["status"] == "stopped-at-budget"
    assert result.report["run"]["processes"][0]["steps"] == 4


def test_bare_except_cannot_swallow_the_stop() -> None:
    result = convcheck("run", "--ignore", "CC002", "--steps", "3", "--format", "json", "--timeout", "60", SCRIPTS / "bare_except.py")
    assert result.code == 0, result.stderr
    assert result.report["run"]["status"] == "stopped-at-budget"
    assert result.report["run"]["processes"][0]["steps"] == 3


def test_crash_before_first_step_exits_2_with_traceback() -> None:
    import re

    import convcheck as package

    # Wide enough that no path in the traceback is folded onto two lines.
    result = convcheck("run", "--ignore", "CC002", SCRIPTS / "crash_early.py", env={"COLUMNS": "400"}, cwd=SCRIPTS)
    assert result.code == 2
    text = " ".join(result.stdout.split())
    assert "the script failed: RuntimeError: mat1 and mat2 shapes cannot be multiplied (8x5 and 4x2)" in text
    assert 'crash_early.py", line 6, in <module> out = model(data)' in text
    # The traceback shows the user's frames and torch's, never convcheck's own (wherever it is installed,
    # whatever the clone's folder is called).
    frames = [Path(f) for f in re.findall(r'File "([^"]+)", line', text.split("Traceback", 1)[1])]
    assert frames and frames[0] == Path("crash_early.py")  # under the working folder: relative
    package_dir = Path(package.__file__).resolve().parent
    assert [f for f in frames if (SCRIPTS / f).resolve().is_relative_to(package_dir)] == []


def test_crash_mid_run_exits_3_with_partial_report(tmp_path: Path) -> None:
    result = convcheck("run", "--ignore", "CC002", "--format", "json", SCRIPTS / "crash_midrun.py")
    assert result.code == 3
    run = result.report["run"]
    assert run["status"] == "crashed"
    assert run["processes"][0]["steps"] == 3
    assert run["error"].startswith("the script failed: RuntimeError: boom at step 3")


def test_no_training_step_exits_5() -> None:
    result = convcheck("run", "--ignore", "CC002", SCRIPTS / "no_step.py")
    assert result.code == 5
    text = " ".join(result.stdout.split())
    assert "No training step observed" in text
    assert "It ran 1 backward() pass, so it may update the parameters by hand" in text
    assert "The script's last output: evaluated only" in text
    assert "(1 step)" not in text and "→" not in text  # no loss curve without a step


def test_hang_is_stopped_at_timeout_with_location() -> None:
    # The script hangs for ever after one step. On a busy machine `import torch` alone can use up a
    # short timeout before that step: then the same run is repeated with a longer one.
    for timeout in ("12", "60", "240"):
        result = convcheck("run", "--ignore", "CC002", "--timeout", timeout, "--format", "json",
                           SCRIPTS / "hang.py", timeout=600)
        if result.code == 4 and result.report["run"]["processes"][0]["steps"] == 1:
            break
    assert result.code == 4
    run = result.report["run"]
    assert run["status"] == "timeout"
    assert run["processes"][0]["steps"] == 1
    assert len(run["hung_at"]) == 1 and 'hang.py", line 12' in run["hung_at"][0]
    assert processes_running(str(SCRIPTS / "hang.py")) == []


def test_ddp_worker_dies_names_rank_and_stops_peers() -> None:
    script = SCRIPTS / "ddp_rank_dies.py"
    # Rank 0 would wait for rank 1 for ever: "crashed" rather than "timeout" shows it was stopped
    # when its peer died, however slow the machine.
    result = convcheck("run", "--nproc-per-node", "2", "--ignore", "CC002", "--format", "json", "--timeout", "600",
                       script, timeout=900)
    assert result.code == 3
    run = result.report["run"]
    assert run["status"] == "crashed"
    assert run["error"].startswith("rank 1 failed: ValueError: rank 1 ran out of data")
    assert processes_running(str(script)) == []


def test_script_argv_and_dunder_main(tmp_path: Path) -> None:
    script = tmp_path / "argv.py"
    script.write_text(
        "import sys, torch\n"
        "assert __name__ == '__main__'\n"
        "assert sys.argv == [%r, '-x', '--flag=1'], sys.argv\n"
        "w = torch.zeros(1, requires_grad=True)\n"
        "opt = torch.optim.SGD([w], lr=1.0)\n"
        "w.sum().backward(); opt.step()\n" % str(script)
    )
    result = convcheck("run", "--ignore", "CC002", "--format", "json", script, "-x", "--flag=1")
    assert result.code == 0, result.stdout + result.stderr
    assert result.report["run"]["processes"][0]["steps"] == 1


def test_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    script = SCRIPTS / "hang.py"
    traces = tmp_path / "traces"
    # The timeout is far away: only Ctrl-C can end this run, however slow the machine.
    proc = subprocess.Popen(
        [sys.executable, "-m", "convcheck", "run", "--ignore", "CC002", "--timeout", "600", "--trace-dir", traces,
         script],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=sigint_as_from_a_terminal,
    )
    try:
        # Ctrl-C once the script is in its endless loop: its one training step is in the trace.
        deadline = time.monotonic() + 300  # only a bound against a run that never starts
        while not any(e["ev"] == "step" for t in _readable_traces(traces) for e in t):
            assert time.monotonic() < deadline and proc.poll() is None, "the run never reached its loop"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        # Stopping every process can take long on a busy machine; the bound only catches a hang.
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:  # a failed test leaves nothing running for the next one
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err
    assert "interrupted" in out
    time.sleep(0.2)
    assert [c for c in processes_running(str(script)) if "convcheck.runtime.worker" in c] == []


def _readable_traces(trace_dir: Path) -> list[list[dict]]:
    """The traces written so far; a line being written is left for the next look."""
    import json

    found = []
    for path in sorted((trace_dir / "trace").glob("trace-*.jsonl")):
        events = []
        for line in path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                break
        found.append(events)
    return found


@pytest.fixture(scope="module")
def loader_workers_run(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """One run of a script with two DataLoader workers, shared by the tests that look at it."""
    traces = tmp_path_factory.mktemp("loader-workers") / "traces"
    script = SCRIPTS / "loader_workers.py"
    # CC002 stays selected (its seeding recorder is what sees torch seed each worker); full epochs: one
    # epoch's two workers (each shortened epoch would start two more).
    result = convcheck("run", "--steps", "5", "--max-batches-per-epoch", "0", "--format", "json", "--trace-dir", traces,
                       script)
    return result, read_traces(traces), processes_running(str(script))


def test_dataloader_workers_do_not_outlive_the_run(loader_workers_run: tuple) -> None:
    result, _, left = loader_workers_run
    assert result.code == 0, result.stderr
    assert result.report["run"]["status"] == "stopped-at-budget"
    assert left == []


def test_dataloader_workers_are_probed_too(loader_workers_run: tuple) -> None:
    result, all_traces, _ = loader_workers_run
    assert result.code == 0, result.stderr
    workers = [t for t in all_traces if t[0]["role"] == "forked-child"]
    assert len(workers) == 2
    # torch seeds each worker itself; the probe marks those calls as not the user's.
    for events in workers:
        assert {(e["rng"], e["internal"]) for e in _kinds(events, "seed")} == {
            ("python", True), ("torch", True), ("numpy", True)
        }


def test_the_users_own_sitecustomize_still_runs(tmp_path: Path) -> None:
    import os

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import os\nos.environ['USER_SITE_LOADED'] = 'yes'\n")
    script = tmp_path / "train.py"
    script.write_text(
        "import os, torch\n"
        "assert os.environ.get('USER_SITE_LOADED') == 'yes'\n"
        "w = torch.zeros(1, requires_grad=True)\n"
        "opt = torch.optim.SGD([w], lr=1.0)\n"
        "w.sum().backward(); opt.step()\n"
    )
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(site))
    proc = subprocess.run([sys.executable, "-m", "convcheck", "run", "--ignore", "CC002", "--format", "json", str(script)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_sigterm_and_sigkill_of_convcheck_leave_no_worker() -> None:
    import signal
    import subprocess
    import sys
    import time

    script = SCRIPTS / "hang.py"
    for sig in (signal.SIGTERM, signal.SIGKILL):
        proc = subprocess.Popen([sys.executable, "-m", "convcheck", "run", "--ignore", "CC002", "--timeout", "120", script],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 300  # only a bound against a run that never starts
            while len(processes_running(str(script))) < 2:
                assert time.monotonic() < deadline, "the run never started"
                time.sleep(0.1)
            time.sleep(1.0)
            proc.send_signal(sig)
            proc.wait(timeout=300)  # a bound against a hang, not a measure of speed
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        deadline = time.monotonic() + 300
        while [c for c in processes_running(str(script)) if "convcheck.runtime.worker" in c]:
            assert time.monotonic() < deadline, f"a worker outlived convcheck after {sig.name}"
            time.sleep(0.1)


def test_steps_a_gradscaler_skipped_still_count_as_training() -> None:
    result = convcheck("run", "--ignore", "CC002", "--steps", "4", "--format", "json", "--fail-on", "never", SCRIPTS / "amp_all_skipped.py")
    assert result.code == 0, result.stdout + result.stderr
    run = result.report["run"]
    assert run["status"] == "stopped-at-budget"
    assert run["processes"][0]["steps"] == 0
    assert "No training step observed" not in (run["error"] or "")


def test_spawned_dataloader_workers_are_probed_and_stopped(tmp_path: Path) -> None:
    script = SCRIPTS / "loader_spawn_workers.py"
    traces = tmp_path / "traces"
    result = convcheck("run", "--steps", "3", "--max-batches-per-epoch", "0", "--ignore", "CC002", "--format", "json",
                       "--trace-dir", traces, script)
    assert result.code == 0, result.stderr
    assert result.report["run"]["status"] == "stopped-at-budget"
    roles = sorted(t[0]["role"] for t in read_traces(traces))
    assert roles == ["child", "child", "entry"]
    assert processes_running(str(script)) == []


def test_nproc_per_node_on_a_script_that_spawns_its_own_ranks_says_what_to_run_instead() -> None:
    result = convcheck("run", "--nproc-per-node", "2", "--format", "json", SCRIPTS / "spawn.py")
    assert result.code == 2, result.stdout + result.stderr
    run = result.report["run"]
    assert run["status"] == "crashed"
    assert run["error"].startswith("rank ") and " stopped: This script starts its own processes with " in run["error"]
    assert f"convcheck run --pretend-cuda --cuda-devices 2 {SCRIPTS / 'spawn.py'}" in run["error"]
    assert "Traceback" not in run["error"]


def test_the_script_reads_the_terminal_convcheck_runs_in(tmp_path: Path) -> None:
    import os
    import pty
    import subprocess
    import sys

    primary, secondary = pty.openpty()
    os.write(primary, b"n\n")
    proc = subprocess.run(
        [sys.executable, "-m", "convcheck", "run", "--format", "json", "--trace-dir", str(tmp_path / "t"),
         str(SCRIPTS / "asks_the_terminal.py")],
        stdin=secondary, capture_output=True, text=True, timeout=300,
    )
    os.close(secondary)
    os.close(primary)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "isatty True answer n" in (tmp_path / "t" / "stdout-0.txt").read_text()


def test_max_batches_per_epoch_is_the_loaders_length(tmp_path: Path) -> None:
    # Code that sizes epochs from len(loader) sees the shortened epoch, so epoch 2 and 3 are reached.
    traces = tmp_path / "traces"
    result = convcheck("run", "--steps", "12", "--max-batches-per-epoch", "3", "--format", "json",
                       "--trace-dir", traces, SCRIPTS / "len_sized_epochs.py")
    assert result.code == 0, result.stdout + result.stderr
    assert result.report["run"]["status"] == "completed"
    (events,) = _trainers(read_traces(traces))
    assert [(e["epoch"], e["batches"]) for e in _kinds(events, "loader_epoch")] == [(1, 3), (2, 3), (3, 3)]
    assert len(_kinds(events, "step")) == 9
