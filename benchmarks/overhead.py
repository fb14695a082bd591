"""Per-step cost of convcheck's probe: instrumented / plain, measured side by side in one run.

    python benchmarks/overhead.py            # full: 5 rounds x 60 steps per model
    python benchmarks/overhead.py --sizes    # and three MLP widths
    python benchmarks/overhead.py --quick    # CI smoke run: prints ratios, asserts nothing
    python benchmarks/overhead.py --select   # every check's recorders against --select CC004's

Each round times the same training loop without the probe and with it (all hooks and
patches installed, traces written to a temporary folder), alternating so that both
see the same machine state; the ratio of the medians is reported. Targets: <= 1.10 for
the MLP, <= 1.05 for the transformer and the conv net.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn as nn

from convcheck.catalog import select_checks
from convcheck.runtime import env
from convcheck.runtime.probe import Probe
from convcheck.runtime.recorders import needed_by


def mlp_step() -> Callable[[], None]:
    """A small MLP classifier: 3 layers of 512, batch 64."""
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(64, 256), torch.randint(0, 10, (64,))
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    return step


def transformer_step() -> Callable[[], None]:
    """A small transformer encoder: 4 layers, d=256, 4 heads, batch 8 x 32 tokens."""
    layer = nn.TransformerEncoderLayer(d_model=256, nhead=4, dim_feedforward=512, batch_first=True, dropout=0.1)
    model = nn.Sequential(nn.Embedding(1000, 256), nn.TransformerEncoder(layer, num_layers=4), nn.Linear(256, 1000))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    tokens = torch.randint(0, 1000, (8, 33))
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad()
        logits = model(tokens[:, :-1])
        loss_fn(logits.reshape(-1, 1000), tokens[:, 1:].reshape(-1)).backward()
        opt.step()

    return step


def convnet_step() -> Callable[[], None]:
    """A small conv net: three 3x3 conv layers (32-64 channels) on 32x32 images, batch 32."""
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    return step


def mlp_of_width(width: int) -> Callable[[], Callable[[], None]]:
    """An MLP factory of a given hidden width (for how the cost grows with model size)."""

    def make() -> Callable[[], None]:
        model = nn.Sequential(nn.Linear(256, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        x, y = torch.randn(64, 256), torch.randint(0, 10, (64,))

        def step() -> None:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

        return step

    return make


def time_steps(step: Callable[[], None], steps: int) -> float:
    """Seconds per step over ``steps`` steps (after two warm-up steps)."""
    step()
    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def measure(name: str, make: Callable[[], Callable[[], None]], rounds: int, steps: int,
            selections: dict[str, list[str] | None] | None = None) -> dict[str, float]:
    """Alternate a plain round and one instrumented round per selection; print and return the ratios of medians.

    A selection is the list of recorders installed besides the probe's own evidence (None: every one).
    """
    selections = selections or {"instrumented": None}
    torch.manual_seed(0)
    step = make()
    plain: list[float] = []
    probed: dict[str, list[float]] = {label: [] for label in selections}
    with tempfile.TemporaryDirectory() as trace_dir:
        probe = Probe(trace_dir=trace_dir, scratch_dir=None, steps=10**9, max_batches=None)
        for _ in range(rounds):
            plain.append(time_steps(step, steps))
            for label, recorders in selections.items():
                if recorders is None:
                    os.environ.pop(env.RECORDERS, None)
                else:
                    os.environ[env.RECORDERS] = ",".join(recorders)
                probe.install()
                try:
                    probed[label].append(time_steps(step, steps))
                finally:
                    probe.uninstall()
        probe.finish("benchmark")
    os.environ.pop(env.RECORDERS, None)
    base = statistics.median(plain)
    ratios = {label: statistics.median(times) / base for label, times in probed.items()}
    shown = "   ".join(f"{label} {statistics.median(probed[label]) * 1e3:8.2f} ms/step ratio {ratios[label]:.3f}"
                       for label in selections)
    print(f"{name:<12} plain {base * 1e3:8.2f} ms/step   {shown}")
    return ratios


def main() -> None:
    """Run the benchmark and print one line per model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few short rounds (smoke test)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: stable timings)")
    parser.add_argument("--sizes", action="store_true", help="also three MLP widths, to show how cost grows")
    parser.add_argument("--select", action="store_true",
                        help="compare every check's recorders with those of --select CC004 only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rounds, steps = (2, 5) if args.quick else (5, 60)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {rounds} rounds x {steps} steps")
    selections = None
    if args.select:
        selections = {"every check": needed_by(select_checks([], [])),
                      "--select CC004": needed_by(select_checks(["CC004"], []))}
        print("recorders: " + "; ".join(f"{label}: {', '.join(names) or 'none'}" for label, names in selections.items()))
    measure("mlp", mlp_step, rounds, steps, selections)
    measure("transformer", transformer_step, rounds, steps, selections)
    measure("convnet", convnet_step, rounds, steps, selections)
    if args.sizes:
        print("how the cost grows with model size (Adam MLP, hidden width):")
        for width in (256, 1024, 2048):
            measure(f"mlp-{width}", mlp_of_width(width), rounds, steps)


if __name__ == "__main__":
    main()
