"""Per-step cost of convcheck on realistic models: whole 20-step runs, plain vs instrumented, side by side.

    python benchmarks/realistic.py             # three models, 3 rounds of 20-step runs each
    python benchmarks/realistic.py --memory    # and peak RSS, plain vs instrumented (one process each)
    python benchmarks/realistic.py --rounds 0 --memory   # peak RSS only
    python benchmarks/realistic.py --quick     # tiny sizes, one round (CI smoke run): prints, asserts nothing

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
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from convcheck.catalog import select_checks
from convcheck.runtime import env
from convcheck.runtime.probe import Probe
from convcheck.runtime.recorders import needed_by

Step = Callable[[], None]


@dataclass(frozen=True)
class Sizes:
    """The dimensions of the three models (full or --quick)."""

    gpt_layers: int
    gpt_dim: int
    gpt_heads: int
    gpt_block: int
    resnet_widths: tuple[int, int, int, int]
    lstm_hidden: int
    lstm_vocab: int


FULL = Sizes(gpt_layers=6, gpt_dim=384, gpt_heads=6, gpt_block=128, resnet_widths=(64, 128, 256, 512),
             lstm_hidden=650, lstm_vocab=10000)
QUICK = Sizes(gpt_layers=2, gpt_dim=32, gpt_heads=2, gpt_block=16, resnet_widths=(8, 16, 16, 32),
              lstm_hidden=32, lstm_vocab=200)


# -- a GPT-style character model ---------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention over earlier positions only."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).split(dim, dim=2)
        q, k, v = (t.view(batch, length, self.heads, dim // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=0.1 if self.training else 0.0)
        return self.drop(self.out(y.transpose(1, 2).reshape(batch, length, dim)))


class Block(nn.Module):
    """Pre-norm transformer block: attention then a 4x GELU feed-forward, each with a residual."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ff(self.norm2(x))


class CharGPT(nn.Module):
    """Token and position embeddings, a stack of blocks, a final norm and a tied output head."""

    def __init__(self, vocab: int, block: int, dim: int, heads: int, layers: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Embedding(block, dim)
        self.blocks = nn.Sequential(*(Block(dim, heads) for _ in range(layers)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.tokens.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        return self.head(self.norm(self.blocks(self.tokens(idx) + self.positions(pos))))


def gpt_run(sizes: Sizes) -> tuple[nn.Module, Step]:
    """The char model and one training step: random windows of a synthetic character stream, AdamW."""
    vocab, block, batch = 65, sizes.gpt_block, 8
    stream = torch.randint(0, vocab, (200_000,))
    model = CharGPT(vocab, block, sizes.gpt_dim, sizes.gpt_heads, sizes.gpt_layers)
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1, betas=(0.9, 0.95))

    def step() -> None:
        starts = torch.randint(len(stream) - block - 1, (batch,))
        x = torch.stack([stream[s:s + block] for s in starts.tolist()])
        y = torch.stack([stream[s + 1:s + 1 + block] for s in starts.tolist()])
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, vocab), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return model, step


# -- a ResNet-18-shaped conv net -----------------------------------------------------------------


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm, and a 1x1 projection on the shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """The 32x32-image ResNet-18 layout: a 3x3 stem, four stages of two basic blocks, pooling, a classifier."""

    def __init__(self, widths: tuple[int, int, int, int], classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU())
        stages, cin = [], widths[0]
        for i, width in enumerate(widths):
            stages += [BasicBlock(cin, width, 1 if i == 0 else 2), BasicBlock(width, width, 1)]
            cin = width
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(widths[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1), 1))


def resnet_run(sizes: Sizes) -> tuple[nn.Module, Step]:
    """The conv net and one training step: a shuffled DataLoader over synthetic images, SGD with momentum."""
    images, labels = torch.randn(1024, 3, 32, 32), torch.randint(0, 10, (1024,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=32,
                                         shuffle=True, drop_last=True)
    model = ResNet18(sizes.resnet_widths)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    batches = iter(loader)

    def step() -> None:
        nonlocal batches
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return model, step


# -- an LSTM language model ----------------------------------------------------------------------


class LSTMLanguageModel(nn.Module):
    """Embedding, a 2-layer LSTM with dropout, and a linear decoder over the vocabulary."""

    def __init__(self, vocab: int, hidden: int, layers: int = 2, dropout: float = 0.5) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.embed = nn.Embedding(vocab, hidden)
        self.rnn = nn.LSTM(hidden, hidden, layers, dropout=dropout)
        self.decoder = nn.Linear(hidden, vocab)

    def forward(self, tokens: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        out, state = self.rnn(self.drop(self.embed(tokens)), state)
        return self.decoder(self.drop(out)), state


def lstm_run(sizes: Sizes) -> tuple[nn.Module, Step]:
    """The LSTM model and one step of truncated backpropagation through time, SGD with clip_grad_norm_."""
    vocab, hidden, bptt, batch = sizes.lstm_vocab, sizes.lstm_hidden, 35, 20
    stream = torch.randint(0, vocab, (batch * bptt * 64 + 1,))
    columns = stream[: (len(stream) // batch) * batch].view(batch, -1).t().contiguous()
    model = LSTMLanguageModel(vocab, hidden)
    opt = torch.optim.SGD(model.parameters(), lr=20.0)
    state = (torch.zeros(2, batch, hidden), torch.zeros(2, batch, hidden))
    position = 0

    def step() -> None:
        nonlocal state, position
        if position + bptt + 1 > len(columns):
            position = 0
        x, y = columns[position:position + bptt], columns[position + 1:position + 1 + bptt]
        position += bptt
        state = (state[0].detach(), state[1].detach())  # truncated backpropagation: cut the graph here
        model.zero_grad()
        logits, state = model(x, state)
        F.cross_entropy(logits.view(-1, vocab), y.reshape(-1)).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()

    return model, step


MODELS: dict[str, tuple[str, Callable[[Sizes], tuple[nn.Module, Step]]]] = {
    "gpt": ("GPT-style char model, 6 layers, d=384, block 128, batch 8, AdamW", gpt_run),
    "resnet": ("ResNet-18 shape, 32x32 images, batch 32, DataLoader, SGD momentum", resnet_run),
    "lstm": ("2-layer LSTM LM, 650 hidden, vocab 10000, bptt 35, batch 20, SGD + clipping", lstm_run),
}


# -- measuring -----------------------------------------------------------------------------------


def one_run(make: Callable[[Sizes], tuple[nn.Module, Step]], sizes: Sizes, steps: int,
            trace_dir: str | None) -> tuple[float, float, float, int]:
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
        model, step = make(sizes)
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            step()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        if probe is not None:
            start = time.perf_counter()
            probe.uninstall()
            probe.finish("benchmark")
            fixed += time.perf_counter() - start
    return elapsed, cpu, fixed, sum(p.numel() for p in model.parameters())


def measure(name: str, sizes: Sizes, rounds: int, steps: int) -> None:
    """Alternate plain and instrumented whole runs; print ms/step of each and the ratio of the medians."""
    label, make = MODELS[name]
    one_run(make, sizes, 2, None)  # warm-up: kernels, allocator
    plain: dict[str, list[float]] = {"wall": [], "cpu": []}
    probed: dict[str, list[float]] = {"wall": [], "cpu": []}
    fixed: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(rounds):
            wall, cpu, _, params = one_run(make, sizes, steps, None)
            plain["wall"].append(wall / steps)
            plain["cpu"].append(cpu / steps)
            trace_dir = Path(tmp) / f"round{index}"
            trace_dir.mkdir()
            wall, cpu, setup, _ = one_run(make, sizes, steps, str(trace_dir))
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
    print(f"torch {torch.__version__}, {args.threads} thread(s), {rounds} round(s) of {args.steps}-step runs, "
          f"recorders: {', '.join(recorders) or 'none'}")
    names = [n for n in args.models.split(",") if n]
    for name in names:
        print(f"# {MODELS[name][0]}" + (" (quick: tiny sizes)" if args.quick else ""))
        if rounds:
            measure(name, sizes, rounds, args.steps)
    if args.memory:
        print(f"peak RSS of one process, one {args.steps}-step run:")
        for name in names:
            peak_rss(name, args.quick, args.steps)


if __name__ == "__main__":
    main()
