"""`convcheck fix-state-dict --output` against the usual one-liner, on the same checkpoint.

    python benchmarks/fix_state_dict.py              # full: a 1 GB checkpoint, 3 rounds
    python benchmarks/fix_state_dict.py --quick      # smoke run: 64 MB, 1 round
    python benchmarks/fix_state_dict.py --size-mb 4096 --rounds 1 --dir /big/disk

The checkpoint is a training checkpoint saved from a DDP model: {"model": state_dict
with `module.` keys, "epoch", "step"}. Each round runs both sides, each in its own
subprocess, in alternating order:

- naive:     torch.load(weights_only=True) + {k.replace("module.", ""): v ...} + torch.save
- convcheck: python -m convcheck fix-state-dict CKPT --output OUT (atomic write, fsync,
             read back and compare every byte of every tensor with the source)

Wall time includes interpreter start and `import torch` on both sides; peak memory is
the child's maximum resident set size (os.wait4 → ru_maxrss). Linux counts the parent's
resident set at fork in the child's ru_maxrss, so this parent never imports torch and
builds the checkpoint in a subprocess. Before each run the page cache is flushed to disk
(os.sync) so that neither side pays for the other's writeback. Targets: time <= 1.0x and
peak memory <= 0.6x the naive approach. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NAIVE = """
import sys, torch
src, dst = sys.argv[1], sys.argv[2]
ckpt = torch.load(src, map_location="cpu", weights_only=True)
ckpt["model"] = {k.replace("module.", ""): v for k, v in ckpt["model"].items()}
torch.save(ckpt, dst)
"""


def make_checkpoint(path: Path, size_mb: int) -> None:
    """A DDP-style training checkpoint of about ``size_mb`` MB of float32 tensors."""
    import torch
    from collections import OrderedDict

    width = 1024 if size_mb < 256 else 2048
    per_block = width * width * 4 + 4 * width * 4  # weight + bias + norm weight/bias
    blocks = max(1, (size_mb << 20) // per_block)
    gen = torch.Generator().manual_seed(0)
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    for i in range(blocks):
        sd[f"module.blocks.{i}.fc.weight"] = torch.randn(width, width, generator=gen)
        sd[f"module.blocks.{i}.fc.bias"] = torch.randn(width, generator=gen)
        sd[f"module.blocks.{i}.norm.weight"] = torch.ones(width)
        sd[f"module.blocks.{i}.norm.bias"] = torch.zeros(width)
    torch.save({"model": sd, "epoch": 7, "step": 70_000}, path)


def measure(argv: list[str]) -> tuple[float, int, int]:
    """Run ``argv``; return (wall seconds, peak RSS in bytes, exit code)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if proc.returncode != 0:
        print(f"  ! {' '.join(argv[:4])} ... exited {proc.returncode}: {err.strip()[-500:]}")
    return wall, usage.ru_maxrss * 1024, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="tensor bytes in the checkpoint (default 1024)")
    parser.add_argument("--quick", action="store_true", help="64 MB, 1 round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to put the temporary files")
    parser.add_argument("--make-checkpoint", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_checkpoint is not None:
        make_checkpoint(args.make_checkpoint, args.size_mb)
        return
    if args.quick:
        args.size_mb, args.rounds = 64, 1

    with tempfile.TemporaryDirectory(prefix="convcheck-bench-", dir=args.dir) as tmp:
        folder = Path(tmp)
        src = folder / "ddp.pth"
        subprocess.run([sys.executable, __file__, "--make-checkpoint", str(src), "--size-mb", str(args.size_mb)],
                       check=True)
        size = src.stat().st_size
        print(f"checkpoint: {size / 2**20:.0f} MB in {src} ({sys.executable}, {os.cpu_count()} CPUs)")
        sides = {
            "naive": lambda out: [sys.executable, "-c", NAIVE, str(src), str(out)],
            "convcheck": lambda out: [sys.executable, "-m", "convcheck", "fix-state-dict", str(src),
                                      "--output", str(out), "--format", "json"],
        }
        results: dict[str, list[tuple[float, int]]] = {name: [] for name in sides}
        for round_ in range(args.rounds):
            order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
            for name in order:
                out = folder / f"{name}.pth"
                os.sync()
                wall, rss, code = measure(sides[name](out))
                if code == 0:
                    results[name].append((wall, rss))
                print(f"  round {round_ + 1} {name:9s} {wall:6.2f} s  peak RSS {rss / 2**20:7.0f} MB")
                out.unlink(missing_ok=True)

    if not all(results.values()):
        print("a side failed; no ratios")
        sys.exit(1)
    naive_t = statistics.median(w for w, _ in results["naive"])
    conv_t = statistics.median(w for w, _ in results["convcheck"])
    naive_m = max(m for _, m in results["naive"])
    conv_m = max(m for _, m in results["convcheck"])
    print(f"naive      median {naive_t:6.2f} s   peak RSS {naive_m / 2**20:7.0f} MB")
    print(f"convcheck  median {conv_t:6.2f} s   peak RSS {conv_m / 2**20:7.0f} MB  (includes fsync and verification)")
    print(f"time ratio {conv_t / naive_t:.2f}x (target <= 1.0)   memory ratio {conv_m / naive_m:.2f}x (target <= 0.6)")


if __name__ == "__main__":
    main()
