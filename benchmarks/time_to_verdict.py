"""How long a verdict takes: ``convcheck run`` on every bundled example vs running it plainly.

    python benchmarks/time_to_verdict.py           # every example, and the step-count sweep
    python benchmarks/time_to_verdict.py --quick   # one example, no sweep (CI smoke run)
    python benchmarks/time_to_verdict.py --world   # by world size: torchrun vs convcheck run, N = 1, 2, 4
    python benchmarks/time_to_verdict.py --world --quick   # N = 1, 2, one round of 5 steps (CI smoke run)

Prints, side by side in one run: the fixed start-up cost (an interpreter importing torch),
each example's plain wall time (``python example.py``, or under torchrun for a DDP example:
its own full run) and convcheck's
wall time to a verdict with the options the example declares, and how the verdict time
grows with --steps. Target: a verdict on every bundled example in <= 15 s on 2 cores.

``--world`` times one small DDP script (an MLP on synthetic data, DistributedSampler, SGD with
momentum, gloo) instead, alternating in each round: ``python script.py`` against ``convcheck run``
(single process), then for each world size N ``python -m torch.distributed.run --nproc-per-node N``
against ``convcheck run --nproc-per-node N`` with the same steps, and ``convcheck run --ignore CC002``
(no repeat run) to show what the repeat costs. Medians of the rounds and their ratios to the plain
run are printed, of wall time and of the CPU time of each command's whole process tree (the work
done; steadier than wall time on a busy machine). Targets: single-process verdict <= 1.1x plain, DDP
verdict <= 1.0x torchrun (wall time).
"""

from __future__ import annotations

import argparse
import re
import resource
import statistics
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_ARGS = re.compile(r"#\s*convcheck-args:\s*(.+)$", re.MULTILINE)


def wall(cmd: list[str], cwd: Path, timeout: float = 300) -> tuple[float, int]:
    """Seconds a command takes, and its exit code."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout)
    return time.perf_counter() - start, proc.returncode


def wall_and_cpu(cmd: list[str], cwd: Path, timeout: float = 300) -> tuple[float, float, int]:
    """Seconds a command takes, the CPU seconds of its whole process tree (children reaped), and its exit code."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds, code = wall(cmd, cwd, timeout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return seconds, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, code


def example_args(path: Path) -> list[str]:
    """The ``# convcheck-args:`` options an example declares."""
    match = _ARGS.search(path.read_text())
    return shlex.split(match.group(1)) if match else []


DDP_SCRIPT = '''
"""A small data-parallel training script: plain with python, DDP under torchrun."""
import argparse, os
import torch, torch.distributed as dist, torch.nn as nn, torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=20)
args = parser.parse_args()
torch.manual_seed(0)
torch.set_num_threads(1)
distributed = "WORLD_SIZE" in os.environ
if distributed:
    dist.init_process_group("gloo")
data = TensorDataset(torch.randn(4096, 784), torch.randint(0, 10, (4096,)))
sampler = DistributedSampler(data, shuffle=True, seed=0) if distributed else None
loader = DataLoader(data, batch_size=64, sampler=sampler, shuffle=sampler is None, drop_last=True)
model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
if distributed:
    model = nn.parallel.DistributedDataParallel(model)
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
done = 0
for epoch in range(1000):
    if sampler is not None:
        sampler.set_epoch(epoch)
    for x, y in loader:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        done += 1
        if done == args.steps:
            break
    if done == args.steps:
        break
if distributed:
    dist.destroy_process_group()
'''


def by_world_size(quick: bool) -> None:
    """Plain runs against convcheck's verdicts on one DDP script, by world size, alternating in each round."""
    worlds, rounds, steps = ((1, 2), 1, 5) if quick else ((1, 2, 4), 3, 20)
    scratch = Path(tempfile.mkdtemp(prefix="convcheck-ttv-world-"))
    script = scratch / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    python = [sys.executable]
    verdict = [*python, "-m", "convcheck", "run", "--fail-on", "never", "--steps", str(steps)]
    # (label, plain command, convcheck command, convcheck without the repeat run)
    rows = [("python (1 process)", [*python, str(script)], [*verdict, str(script)],
             [*verdict, "--ignore", "CC002", str(script)])]
    for n in worlds:
        rows.append((f"torchrun N={n}", [*python, "-m", "torch.distributed.run", "--nproc-per-node", str(n), str(script)],
                     [*verdict, "--nproc-per-node", str(n), str(script)],
                     [*verdict, "--nproc-per-node", str(n), "--ignore", "CC002", str(script)]))
    times: dict[str, list[list[float]]] = {label: [[], [], []] for label, *_ in rows}
    cpu: dict[str, list[list[float]]] = {label: [[], [], []] for label, *_ in rows}
    notes: dict[str, set[str]] = {label: set() for label, *_ in rows}
    print(f"time to a verdict by world size: {rounds} round(s), {steps} steps, gloo on CPU")
    for _ in range(rounds):
        for label, *commands in rows:
            for kind, cmd in enumerate(commands):
                # The script's own --steps: the plain run makes as many steps as convcheck's budget.
                seconds, cpu_seconds, code = wall_and_cpu([*cmd, "--steps", str(steps)], scratch)
                times[label][kind].append(seconds)
                cpu[label][kind].append(cpu_seconds)
                if code != 0:
                    notes[label].add(f"{('plain', 'convcheck', '--ignore CC002')[kind]} exit {code}")
    print(f"{'run':<20} {'plain':>8} {'convcheck':>10} {'ratio':>6} {'--ignore CC002':>15} {'ratio':>6}")
    for label, *_ in rows:
        plain, full, no_repeat = (statistics.median(t) for t in times[label])
        note = f"  ({'; '.join(sorted(notes[label]))})" if notes[label] else ""
        spread = " ".join(f"{min(t):.1f}-{max(t):.1f}" for t in times[label])
        print(f"{label:<20} {plain:7.2f}s {full:9.2f}s ratio {full / plain:.2f} {no_repeat:14.2f}s "
              f"ratio {no_repeat / plain:.2f}   (rounds, s: {spread}){note}")
    print("CPU seconds of the whole process tree (medians):")
    for label, *_ in rows:
        plain, full, no_repeat = (statistics.median(t) for t in cpu[label])
        print(f"{label:<20} {plain:7.2f}s {full:9.2f}s ({full / plain:.2f}x) {no_repeat:14.2f}s ({no_repeat / plain:.2f}x)")
    shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--world", action="store_true", help="one DDP script by world size instead of the examples")
    args = parser.parse_args()
    startup, _ = wall([sys.executable, "-c", "import torch"], REPO)
    print(f"fixed start-up cost (python + import torch): {startup:.2f} s per process")
    if args.world:
        by_world_size(args.quick)
        return
    examples = sorted(p for p in (REPO / "examples").glob("*.py") if not p.name.startswith("_"))
    if args.quick:
        examples = examples[:1]
    print(f"{'example':<44} {'plain':>8} {'verdict':>8} {'ratio':>6}")
    # Plain runs write what the examples save (checkpoints): in a scratch folder, not the repository.
    scratch = Path(tempfile.mkdtemp(prefix="convcheck-ttv-"))
    worst = 0.0
    for example in examples:
        options = example_args(example)
        plain_cmd = [sys.executable, str(example)]
        if "--nproc-per-node" in options:
            # A DDP example runs plainly the way its users run it: under torchrun.
            nproc = options[options.index("--nproc-per-node") + 1]
            plain_cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", nproc, str(example)]
        plain, plain_code = wall(plain_cmd, scratch)
        verdict, code = wall(
            [sys.executable, "-m", "convcheck", "run", "--fail-on", "never", *options, str(example)],
            scratch,
        )
        worst = max(worst, verdict)
        note = "" if code == 0 else f"  (convcheck exit {code})"
        note += "" if plain_code == 0 else f"  (plain run exit {plain_code})"
        print(f"{example.name:<44} {plain:7.2f}s {verdict:7.2f}s {verdict / plain:6.2f}{note}")
    shutil.rmtree(scratch, ignore_errors=True)
    if examples:
        print(f"slowest verdict: {worst:.2f} s (target <= 15 s)")
    if not args.quick:
        script = REPO / "tests" / "scripts" / "single.py"
        print("verdict time by --steps (tests/scripts/single.py):")
        for steps in (5, 20, 80):
            verdict, _ = wall([sys.executable, "-m", "convcheck", "run", "--steps", str(steps), str(script)], script.parent)
            print(f"  --steps {steps:<3} {verdict:6.2f} s")


if __name__ == "__main__":
    main()
