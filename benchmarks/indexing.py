"""Cost of the probe's Tensor.__getitem__ patch (CC012's batch provenance), in CPU time.

    python benchmarks/indexing.py            # per call, then per step of an index-batched loop
    python benchmarks/indexing.py --quick    # fewer repeats

Per call: each kind of indexing with and without the patch, best of several rounds (CPU time
of this process, so other load on the machine matters less). Per step: a loop that draws its
batches as ``X[perm[i:i + B]]``, without the probe and with it, over the first 16 steps (while
indexing is recorded) and 300 steps after.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import timeit

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convcheck.runtime.patches import Patches
from convcheck.runtime.probe import Probe
from convcheck.runtime.provenance import Provenance

CASES = [("X[3:67]", "X[3:67]"), ("X[:, 0]", "X[:, 0]"), ("X[3]", "X[3]"), ("X[idx]  (recorded)", "X[idx]"),
         ("X[np_idx]  (recorded)", "X[np_idx]"), ("P[idx]  (a Parameter)", "P[idx]"), ("X[mask]", "X[mask]")]


def per_call(rounds: int) -> None:
    """Microseconds per indexing call, without and with the patch."""
    X = torch.randn(4096, 32)
    names = {"X": X, "idx": torch.randperm(4096)[:64], "np_idx": np.random.permutation(4096)[:64],
             "P": nn.Parameter(torch.randn(4096, 8)), "mask": X[:, 0] > 0}
    best = {label: [float("inf"), float("inf")] for label, _ in CASES}
    for _ in range(rounds):
        for patched in (0, 1):
            patches, provenance = Patches(), Provenance()
            if patched:
                provenance.install(torch, patches)
            for label, statement in CASES:
                timer = timeit.Timer(statement, globals=names, timer=time.process_time)
                best[label][patched] = min(best[label][patched], min(timer.repeat(3, 2000)) / 2000 * 1e6)
                provenance.picks.clear()
            patches.undo_all()
    for label, (plain, patched) in best.items():
        print(f"{label:<24} plain {plain:7.2f} us   patched {patched:7.2f} us   +{patched - plain:5.2f} us")


def per_step(rounds: int) -> None:
    """Microseconds of CPU per training step, without and with the whole probe."""
    torch.manual_seed(0)
    X, Y = torch.randn(8192, 64), torch.randint(0, 10, (8192,))
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def cpu(steps: int) -> float:
        perm = torch.randperm(8192)
        start = time.process_time()
        for k in range(steps):
            idx = perm[(k * 64) % 8192:(k * 64) % 8192 + 64]
            loss = F.cross_entropy(model(X[idx]), Y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        return (time.process_time() - start) / steps * 1e6

    times: dict[str, list[float]] = {"plain first": [], "plain after": [], "probe first": [], "probe after": []}
    with tempfile.TemporaryDirectory() as trace_dir:
        for _ in range(rounds):
            times["plain first"].append(cpu(16))
            times["plain after"].append(cpu(300))
            probe = Probe(trace_dir=trace_dir, scratch_dir=None, steps=10**9, max_batches=None)
            probe.install()
            try:
                times["probe first"].append(cpu(16))
                times["probe after"].append(cpu(300))
            finally:
                probe.uninstall()
            probe.finish("benchmark")
    m = {k: statistics.median(v) for k, v in times.items()}
    for when in ("first", "after"):
        plain, probed = m[f"plain {when}"], m[f"probe {when}"]
        span = "first 16 steps" if when == "first" else "next 300 steps"
        print(f"{span:<15} plain {plain:7.0f} us/step   probe {probed:7.0f} us/step   ratio {probed / plain:.3f}")


def main() -> None:
    """Print the per-call and per-step costs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke test)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rounds = 2 if args.quick else 6
    per_call(rounds)
    per_step(rounds)


if __name__ == "__main__":
    main()
