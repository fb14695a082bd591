"""What checking every trace line against its kind's schema costs, next to reading the trace at all.

    python benchmarks/trace_validation.py              # full: a 20,000-event trace, 5 rounds
    python benchmarks/trace_validation.py --quick      # smoke run: 2,000 events, 1 round

A real trace is recorded first (an AMP example with clipping, through `convcheck run --trace-dir`);
its training events (steps, backwards with their graphs, gradient clears, scaler calls...) are
then repeated, in their recorded order, until the trace holds the asked number of events. In
this process, alternating, round after round:

- json:      the file read and every line decoded and kept, nothing else
- convcheck: read_trace_dir (the same, and each event validated against its kind's schema)
- validate:  validate_event alone, over the events already decoded

The first read also builds the validators of the kinds it meets (once per process);
it is printed apart. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "cc007_clip_before_unscale.py"


def record(folder: Path) -> list[str]:
    """The lines of one real trace of the example."""
    subprocess.run([sys.executable, "-m", "convcheck", "run", "--steps", "6", "--select", "CC007", "--fail-on",
                    "never", "--trace-dir", str(folder), str(EXAMPLE)], check=True, capture_output=True,
                   cwd=EXAMPLE.parent)
    (path,) = (folder / "trace").glob("trace-*.jsonl")
    return path.read_text(encoding="utf-8").splitlines()


def grow(lines: list[str], events: int) -> list[str]:
    """The trace with its training events repeated until it holds ``events`` lines."""
    kinds = [json.loads(line)["ev"] for line in lines]
    first = kinds.index("step")
    last = len(kinds) - 1 - kinds[::-1].index("step")
    head, body, tail = lines[: first + 1], lines[first + 1: last + 1], lines[last + 1:]
    grown = list(head)
    while len(grown) + len(tail) < events:
        grown.extend(body[: events - len(grown) - len(tail)])
    return grown + tail


def timed(fn) -> float:  # noqa: ANN001
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 events, 1 round")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    events, rounds = (2_000, 1) if args.quick else (args.events, args.rounds)

    # The CLI has pydantic's models loaded (findings, config) before it reads a trace: so does this process.
    import convcheck.config  # noqa: F401
    import convcheck.findings  # noqa: F401
    from convcheck.runtime.events import validate_event
    from convcheck.runtime.trace import read_trace_dir

    with tempfile.TemporaryDirectory() as tmp:
        lines = grow(record(Path(tmp) / "recorded"), events)
        folder = Path(tmp) / "grown"
        folder.mkdir()
        (folder / "trace-host-1.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        size_mb = (folder / "trace-host-1.jsonl").stat().st_size / 1e6

        def decode() -> None:
            # Kept, as a reader keeps them: holding the events is part of what reading costs.
            text = (folder / "trace-host-1.jsonl").read_text(encoding="utf-8")
            kept = [json.loads(line) for line in text.splitlines()]
            assert len(kept) == len(lines)

        def validated() -> None:
            trace = read_trace_dir(folder)
            assert not trace.damaged, trace.damaged[:3]

        cold = timed(validated)
        decoded = [json.loads(line) for line in lines]
        plain, checked, alone = [], [], []
        for _ in range(rounds):
            plain.append(timed(decode))
            checked.append(timed(validated))
            alone.append(timed(lambda: [validate_event(e) for e in decoded]))

    kinds = len({e["ev"] for e in decoded})
    median = statistics.median
    print(f"trace: {len(lines)} events of {kinds} kinds, {size_mb:.1f} MB; medians of {rounds} rounds")
    print(f"json only:                      {median(plain) * 1e3:8.1f} ms")
    print(f"read_trace_dir:                 {median(checked) * 1e3:8.1f} ms")
    each = median(alone) / len(lines) * 1e6
    print(f"validate_event alone:           {median(alone) * 1e3:8.1f} ms ({each:.1f} us an event)")
    print(f"first read (builds validators): {cold * 1e3:8.1f} ms")
    print(f"ratio {median(checked) / median(plain):.2f}  (read_trace_dir / json only)")


if __name__ == "__main__":
    main()
