"""How long a verdict takes: ``convcheck run`` on every bundled example vs running it plainly.

    python benchmarks/time_to_verdict.py           # every example, and the step-count sweep
    python benchmarks/time_to_verdict.py --quick   # one example, no sweep (CI smoke run)
    python benchmarks/time_to_verdict.py --world   # by world size: torchrun vs convcheck run, N = 1, 2, 4
    python benchmarks/time_to_verdict.py --world --quick   # N = 1, 2, one round of 5 steps (CI smoke run)
    python benchmarks/time_to_verdict.py --world --model gpt --rounds 1   # a compute-bound realistic script

Prints, side by side in one run: the fixed start-up cost (an interpreter importing torch),
each example's plain wall time (``python example.py``, or under torchrun for a DDP example:
its own full run) and convcheck's
wall time to a verdict with the options the example declares, and how the verdict time
grows with --steps. Target: a verdict on every bundled example in <= 15 s on 2 cores.

``--world`` times one small DDP script (an MLP on synthetic data, DistributedSampler, SGD with
momentum, gloo) instead, alternating in each round: ``python script.py`` against ``convcheck run``
(single process), then for each world size N ``python -m torch.distributed.run --nproc-per-node N``
against ``convcheck run --nproc-per-node N`` with the same steps, ``convcheck run --ignore CC002``
(no repeat run) to show what the repeat costs, and ``convcheck run --start-method spawn`` (every
worker a fresh interpreter, none forked from a process that imported torch) to show what forking
saves. ``--model gpt`` times the 10.7M-parameter GPT-style model of ``models.py`` instead of the
MLP: 20 steps of it take tens of seconds, so start-up no longer dominates. Medians of the rounds and their ratios to the plain run are printed, of wall time and of the CPU time of each command's whole process tree (the work
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
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

GPT_SCRIPT = """
\"\"\"A realistic data-parallel script: the GPT-style char model of benchmarks/models.py, AdamW, DDP under torchrun.\"\"\"
import argparse, os, sys
import torch, torch.distributed as dist, torch.nn.functional as F
sys.path.insert(0, {models_dir!r})
from models import CharGPT

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=20)
args = parser.parse_args()
torch.manual_seed(0)
torch.set_num_threads(1)
distributed = "WORLD_SIZE" in os.environ
if distributed:
    dist.init_process_group("gloo")
rank = dist.get_rank() if distributed else 0
vocab, block, batch = 65, {block}, 8
stream = torch.randint(0, vocab, (200_000,))
model = CharGPT(vocab, block, {dim}, {heads}, {layers})
if distributed:
    model = torch.nn.parallel.DistributedDataParallel(model)
opt = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1, betas=(0.9, 0.95))
windows = torch.Generator().manual_seed(1 + rank)
for _ in range(args.steps):
    starts = torch.randint(len(stream) - block - 1, (batch,), generator=windows).tolist()
    x = torch.stack([stream[s:s + block] for s in starts])
    y = torch.stack([stream[s + 1:s + 1 + block] for s in starts])
    loss = F.cross_entropy(model(x).view(-1, vocab), y.view(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
if distributed:
    dist.destroy_process_group()
"""


def world_script(model: str, quick: bool) -> str:
    """The DDP script ``--world`` times: the small MLP, or the GPT-style model of models.py."""
    if model == "mlp":
        return DDP_SCRIPT
    from models import FULL, QUICK

    sizes = QUICK if quick else FULL
    return GPT_SCRIPT.format(models_dir=str(Path(__file__).resolve().parent), block=sizes.gpt_block,
                             dim=sizes.gpt_dim, heads=sizes.gpt_heads, layers=sizes.gpt_layers)


#: The commands timed for each row, after the plain run: (column title, options added to ``convcheck run``).
WORLD_COLUMNS = (("convcheck", []), ("--ignore CC002", ["--ignore", "CC002"]),
                 ("--start-method spawn", ["--start-method", "spawn"]))


def by_world_size(quick: bool, model: str = "mlp", rounds: int | None = None) -> None:
    """Plain runs against convcheck's verdicts on one DDP script, by world size, alternating in each round."""
    worlds, default_rounds, steps = ((1, 2), 1, 5) if quick else ((1, 2, 4), 3, 20)
    rounds = default_rounds if rounds is None else rounds
    scratch = Path(tempfile.mkdtemp(prefix="convcheck-ttv-world-"))
    script = scratch / "ddp_train.py"
    script.write_text(world_script(model, quick))
    python = [sys.executable]
    verdict = [*python, "-m", "convcheck", "run", "--fail-on", "never", "--steps", str(steps)]
    # (label, plain command, options that make it convcheck's command)
    rows = [("python (1 process)", [*python, str(script)], [])]
    for n in worlds:
        rows.append((f"torchrun N={n}", [*python, "-m", "torch.distributed.run", "--nproc-per-node", str(n), str(script)],
                     ["--nproc-per-node", str(n)]))
    titles = ["plain", *(title for title, _ in WORLD_COLUMNS)]
    times: dict[str, list[list[float]]] = {label: [[] for _ in titles] for label, *_ in rows}
    cpu: dict[str, list[list[float]]] = {label: [[] for _ in titles] for label, *_ in rows}
    notes: dict[str, set[str]] = {label: set() for label, *_ in rows}
    print(f"time to a verdict by world size ({model}): {rounds} round(s), {steps} steps, gloo on CPU")
    for _ in range(rounds):
        for label, plain_cmd, world in rows:
            commands = [plain_cmd, *([*verdict, *world, *extra, str(script)] for _, extra in WORLD_COLUMNS)]
            for kind, cmd in enumerate(commands):
                # The script's own --steps: the plain run makes as many steps as convcheck's budget.
                seconds, cpu_seconds, code = wall_and_cpu([*cmd, "--steps", str(steps)], scratch)
                times[label][kind].append(seconds)
                cpu[label][kind].append(cpu_seconds)
                if code != 0:
                    notes[label].add(f"{titles[kind]} exit {code}")
    header = "".join(f" {title:>21}" for title in titles[1:])
    print(f"{'run':<20} {'plain':>8}{header}")
    for label, *_ in rows:
        medians = [statistics.median(t) for t in times[label]]
        cells = "".join(f" {m:6.2f}s ratio {m / medians[0]:4.2f}   " for m in medians[1:])
        note = f"  ({'; '.join(sorted(notes[label]))})" if notes[label] else ""
        spread = " ".join(f"{min(t):.1f}-{max(t):.1f}" for t in times[label])
        print(f"{label:<20} {medians[0]:7.2f}s{cells}   (rounds, s: {spread}){note}")
    print("CPU seconds of the whole process tree (medians):")
    for label, *_ in rows:
        medians = [statistics.median(t) for t in cpu[label]]
        cells = "".join(f" {m:6.2f}s ({m / medians[0]:4.2f}x)      " for m in medians[1:])
        print(f"{label:<20} {medians[0]:7.2f}s{cells}")
    shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--world", action="store_true", help="one DDP script by world size instead of the examples")
    parser.add_argument("--model", choices=("mlp", "gpt"), default="mlp",
                        help="with --world: the small MLP (start-up bound) or the 10.7M GPT-style model (compute bound)")
    parser.add_argument("--rounds", type=int, help="with --world: alternating rounds (default 3; 1 with --quick)")
    args = parser.parse_args()
    startup, _ = wall([sys.executable, "-c", "import torch"], REPO)
    print(f"fixed start-up cost (python + import torch): {startup:.2f} s per process")
    if args.world:
        by_world_size(args.quick, args.model, args.rounds)
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
