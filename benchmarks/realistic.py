"""Per-step cost of convcheck on realistic models: whole 20-step runs, plain vs instrumented, side by side.

    python benchmarks/realistic.py             # three models, 3 rounds of 20-step runs each
    python benchmarks/realistic.py --memory    # and peak RSS, plain vs instrumented (one process each)
    python benchmarks/realistic.py --rounds 0 --memory   # peak RSS only
    python benchmarks/realistic.py --quick     # tiny sizes, one round (CI smoke run): prints, asserts nothing
    python benchmarks/realistic.py --device cuda --rounds 2   # on a GPU: wall time per step is what counts

The models are written with torch.nn only and fed synthetic data (nothing is downloaded):

* gpt: a GPT-style character model, 6 layers, d=384, 6 heads, block 128, vocab 65, batch 8, AdamW (~10.7M);
* resnet: a ResNet-18-shaped net for 32x32 images (basic blocks [2, 2, 2, 2], widths 64-512, BatchNorm),
  batch 32 from a DataLoader, SGD with momentum (~11.2M);
* lstm: a 2-layer LSTM language model, 650 hidden, vocab 10000, bptt 35, batch 20, SGD with
  clip_grad_norm_ (~19.8M).

Each round builds the model, optimizer and data afresh and times a whole run of ``--steps`` steps
(default 20, convcheck's default budget) plainly, then the same under a fresh probe with the recorders
of every default check installed, exactly as ``convcheck run`` would: so the timed window holds the
probe's sampled heavy steps (norms on steps 1-5 and every tenth, parameter copies for the update on
steps 1-3, histograms on step 1) and the first forward's model registration. Rounds alternate; the
ratio of the medians is reported, of wall time and of the process's CPU time: with one torch thread
and no DataLoader workers both measure the same work, but CPU time leaves out the time other processes
on a busy machine take the core away, so it is the steadier of the two there. Installing the probe and
writing its last events are a fixed cost outside the steps, reported on its own. Target: <= 1.05x per step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from convcheck.catalog import select_checks
from convcheck.runtime import env
from convcheck.runtime.probe import Probe
from convcheck.runtime.recorders import needed_by

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import FULL, MODELS, QUICK, Sizes, Step  # noqa: E402


# -- measuring -----------------------------------------------------------------------------------


def one_run(make: Callable[[Sizes, str], tuple[nn.Module, Step]], sizes: Sizes, steps: int,
            trace_dir: str | None, device: str = "cpu") -> tuple[float, float, float, int]:
    """Build the model afresh and run ``steps`` steps; under a fresh probe when a trace folder is given.

    Returns the wall and CPU seconds the steps took, the seconds spent installing the probe and writing
    its last events, and the number of parameters.
    """
    torch.manual_seed(0)
    fixed = 0.0
    probe = None
    if trace_dir is not None:
        start = time.perf_counter()
        probe = Probe(trace_dir=trace_dir, scratch_dir=None, steps=10**9, max_batches=None)
        probe.install()
        fixed += time.perf_counter() - start
    try:
        # Built under the probe, as a script run by convcheck builds them (optimizer and DataLoader patches).
        model, step = make(sizes, device)
        _synchronize(device)
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            step()
        _synchronize(device)  # a GPU step has ended when its kernels have, not when Python returns
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        if probe is not None:
            start = time.perf_counter()
            probe.uninstall()
            probe.finish("benchmark")
            fixed += time.perf_counter() - start
    return elapsed, cpu, fixed, sum(p.numel() for p in model.parameters())


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(name: str, sizes: Sizes, rounds: int, steps: int, device: str = "cpu") -> None:
    """Alternate plain and instrumented whole runs; print ms/step of each and the ratio of the medians."""
    label, make = MODELS[name]
    one_run(make, sizes, 2, None, device)  # warm-up: kernels, allocator
    plain: dict[str, list[float]] = {"wall": [], "cpu": []}
    probed: dict[str, list[float]] = {"wall": [], "cpu": []}
    fixed: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(rounds):
            wall, cpu, _, params = one_run(make, sizes, steps, None, device)
            plain["wall"].append(wall / steps)
            plain["cpu"].append(cpu / steps)
            trace_dir = Path(tmp) / f"round{index}"
            trace_dir.mkdir()
            wall, cpu, setup, _ = one_run(make, sizes, steps, str(trace_dir), device)
            probed["wall"].append(wall / steps)
            probed["cpu"].append(cpu / steps)
            fixed.append(setup)
    print(f"{name:<7} {params / 1e6:6.2f}M params, probe install + finish {statistics.median(fixed) * 1e3:.0f} ms "
          "per run (outside the steps)")
    for clock in ("wall", "cpu"):
        base, instrumented = statistics.median(plain[clock]), statistics.median(probed[clock])
        spread = f"plain {min(plain[clock]) * 1e3:.1f}-{max(plain[clock]) * 1e3:.1f}, instrumented " \
                 f"{min(probed[clock]) * 1e3:.1f}-{max(probed[clock]) * 1e3:.1f}"
        print(f"  {clock:<4} plain {base * 1e3:9.2f} ms/step   instrumented {instrumented * 1e3:9.2f} ms/step   "
              f"ratio {instrumented / base:.3f}   (rounds: {spread} ms/step)")


def child(name: str, sizes: Sizes, steps: int) -> None:
    """One training run in this process, under the probe when the environment names a trace folder."""
    torch.set_num_threads(1)
    trace_dir = os.environ.get(env.TRACE_DIR)
    one_run(MODELS[name][1], sizes, steps, trace_dir or None)


def peak_rss(name: str, quick: bool, steps: int) -> None:
    """Peak RSS of one process training the model, plain vs under the probe (fresh processes)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from memory import peak_rss_mb

    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--steps", str(steps),
           *(["--quick"] if quick else [])]
    plain_env = {k: v for k, v in os.environ.items() if k != env.TRACE_DIR}
    with tempfile.TemporaryDirectory() as tmp:
        probed_env = {**plain_env, env.TRACE_DIR: tmp}
        plain = peak_rss_mb(cmd, plain_env)
        probed = peak_rss_mb(cmd, probed_env)
    print(f"{name:<7} peak RSS plain {plain:7.1f} MB   instrumented {probed:7.1f} MB   ratio {probed / plain:.3f}")


def main() -> None:
    """Run the benchmark and print one line per model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models, one round (smoke test)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds per model (default 3; 0: no timing, with --memory only RSS)")
    parser.add_argument("--steps", type=int, default=20, help="steps per run (default 20, convcheck's budget)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: stable timings)")
    parser.add_argument("--models", default=",".join(MODELS), help="which models, comma-separated")
    parser.add_argument("--memory", action="store_true", help="also peak RSS, plain vs instrumented")
    parser.add_argument("--device", default="cpu", help="where the models train: cpu (default) or cuda")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    if args.child:
        child(args.child, sizes, args.steps)
        return
    torch.set_num_threads(args.threads)
    rounds = 1 if args.quick else args.rounds
    # The recorders `convcheck run` installs with the default selection of checks.
    recorders = needed_by(select_checks([], []))
    os.environ[env.RECORDERS] = ",".join(recorders)
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"torch {torch.__version__}, {where}, {args.threads} thread(s), {rounds} round(s) of {args.steps}-step runs, "
          f"recorders: {', '.join(recorders) or 'none'}")
    names = [n for n in args.models.split(",") if n]
    for name in names:
        print(f"# {MODELS[name][0]}" + (" (quick: tiny sizes)" if args.quick else ""))
        if rounds:
            measure(name, sizes, rounds, args.steps, args.device)
    if args.memory:
        print(f"peak RSS of one process, one {args.steps}-step run:")
        for name in names:
            peak_rss(name, args.quick, args.steps)


if __name__ == "__main__":
    main()
