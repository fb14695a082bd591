"""How long a verdict takes: ``convcheck run`` on every bundled example vs running it plainly.

    python benchmarks/time_to_verdict.py           # every example, and the step-count sweep
    python benchmarks/time_to_verdict.py --quick   # one example, no sweep (CI smoke run)

Prints, side by side in one run: the fixed start-up cost (an interpreter importing torch),
each example's plain wall time (``python example.py``, or under torchrun for a DDP example:
its own full run) and convcheck's
wall time to a verdict with the options the example declares, and how the verdict time
grows with --steps. Target: a verdict on every bundled example in <= 15 s on 2 cores.
"""

from __future__ import annotations

import argparse
import re
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


def example_args(path: Path) -> list[str]:
    """The ``# convcheck-args:`` options an example declares."""
    match = _ARGS.search(path.read_text())
    return shlex.split(match.group(1)) if match else []


def main() -> None:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    startup, _ = wall([sys.executable, "-c", "import torch"], REPO)
    print(f"fixed start-up cost (python + import torch): {startup:.2f} s per process")
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
