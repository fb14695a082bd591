"""On a machine with CUDA: do the examples still get their findings, and what does the probe cost per GPU step?

    python benchmarks/gpu_check.py                          # on a CUDA machine; a few minutes
    python benchmarks/gpu_check.py --device cpu --quick     # a rehearsal on the CPU (CUDA usage mapped onto it)

1. Every bundled example through ``convcheck run --device DEVICE --format json`` with the options it declares:
   a buggy example must report each finding its ``# expect:`` lines name (code, severity, line), a fixed twin
   nothing at all, as the test suite asks on the CPU. The examples are CPU scripts except where they take a
   GPU path when CUDA is there (fp16 with a GradScaler, a CUDA-only shuffle).
2. Two scripts written for CUDA, each with its fixed twin: fp16 autocast with ``GradScaler("cuda")`` on inputs
   that overflow fp16 (CC007 error; the twin autocasts to bfloat16), and DDP on nccl, one GPU per process, whose sampler is never told the
   epoch (CC004 error), with as many processes as there are GPUs, at most 2.
3. ``realistic.py --device DEVICE``: the probe's cost per step on the three realistic models, wall time.

Runs are made several at a time. Prints one line per script and the ratios; exits 1 if any expectation failed.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from time_to_verdict import example_args  # noqa: E402

_EXPECT = re.compile(r"#\s*expect:\s*(CC\d{3})\s+(error|warning|info)\b")

AMP_SCRIPT = '''
"""{dtype} autocast on CUDA with a GradScaler; some inputs reach 1e5."""
import torch, torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
x = torch.randn(256, 16)
x[::40] *= 1e5
loader = DataLoader(TensorDataset(x, torch.randint(0, 4, (256,))), batch_size=16, shuffle=True)
model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4)).cuda()
opt = torch.optim.SGD(model.parameters(), lr=0.01)
scaler = torch.amp.GradScaler("cuda")
for epoch in range(3):
    for xb, yb in loader:
        xb, yb = xb.cuda(), yb.cuda()
        opt.zero_grad()
        with torch.autocast("cuda", dtype=torch.{dtype}):
            loss = nn.functional.cross_entropy(model(xb), yb){expect}
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
'''

NCCL_SCRIPT = '''
"""DDP on nccl, one GPU per process, a DistributedSampler {what}."""
import os
import torch, torch.distributed as dist, torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

dist.init_process_group("nccl")
local_rank = int(os.environ["LOCAL_RANK"])
torch.cuda.set_device(local_rank)
torch.manual_seed(0)
data = TensorDataset(torch.randn(64, 8), torch.randint(0, 2, (64,)))
sampler = DistributedSampler(data, shuffle=True, seed=0)
loader = DataLoader(data, batch_size=8, sampler=sampler)
model = DDP(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)).cuda(), device_ids=[local_rank])
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for epoch in range(10):{expect}
    {set_epoch}
    for x, y in loader:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x.cuda()), y.cuda()).backward()
        opt.step()
dist.destroy_process_group()
'''


def cuda_scripts(folder: Path, gpus: int) -> list[tuple[Path, list[str]]]:
    """The CUDA-written scripts and their fixed twins, in ``folder``, with the options each runs with."""
    scripts = {
        "amp_overflow.py": AMP_SCRIPT.format(dtype="float16", expect="  # expect: CC007 error"),
        # bfloat16 has fp32's range: nothing overflows (the scaler is then optional).
        "amp_overflow_fixed.py": AMP_SCRIPT.format(dtype="bfloat16", expect=""),
        "nccl_sampler.py": NCCL_SCRIPT.format(what="never told the epoch", expect="  # expect: CC004 error",
                                              set_epoch="pass"),
        "nccl_sampler_fixed.py": NCCL_SCRIPT.format(what="told each epoch", expect="",
                                                    set_epoch="sampler.set_epoch(epoch)"),
    }
    nproc = str(max(1, min(2, gpus)))
    runs = []
    for name, text in scripts.items():
        path = folder / name
        path.write_text(text.lstrip())
        ddp = ["--nproc-per-node", nproc, "--max-batches-per-epoch", "2"] if name.startswith("nccl") else []
        runs.append((path, ["--steps", "8", *ddp]))
    return runs


def expectations(path: Path) -> set[tuple[str, str, int]]:
    """The (code, severity, line) findings a script's ``# expect:`` lines declare."""
    return {(m.group(1), m.group(2), number) for number, line in enumerate(path.read_text().splitlines(), start=1)
            for m in _EXPECT.finditer(line)}


def verdict(path: Path, options: list[str], device: str) -> tuple[str, bool, str]:
    """Run convcheck on one script; (name, as expected, what differed)."""
    expected = expectations(path)
    cmd = [sys.executable, "-m", "convcheck", "run", "--device", device, "--format", "json", "--fail-on", "never",
           *example_args(path), *options, str(path)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=path.parent, timeout=600)
    if out.returncode != 0:
        return path.name, False, f"exit {out.returncode}: {out.stderr.strip()[-300:]}"
    report = json.loads(out.stdout)
    got = {(f["code"], f["severity"], (f.get("location") or {}).get("line")) for f in report["findings"]}
    if path.stem.endswith("_fixed"):
        return path.name, not got, f"reported {sorted(got, key=str)}" if got else "quiet"
    missing = expected - got
    return path.name, bool(expected) and not missing, f"missing {sorted(missing)}" if missing else "found"


def main() -> None:
    """Run the checks and print a line per script, then the per-step ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu for a rehearsal without a GPU")
    parser.add_argument("--quick", action="store_true", help="a few examples and tiny models (a smoke run)")
    parser.add_argument("--jobs", type=int, default=4, help="runs made at once (default 4)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: CUDA is not available here; --device cpu rehearses the same runs on the CPU.")
    gpus = torch.cuda.device_count() if args.device == "cuda" else 2
    where = torch.cuda.get_device_name() if args.device == "cuda" else "cpu (rehearsal: CUDA usage mapped)"
    print(f"torch {torch.__version__}, {where}, {gpus} GPU(s) counted")
    examples = sorted(p for p in (REPO / "examples").glob("cc*.py"))
    if args.quick:
        examples = [p for p in examples if p.name.startswith(("cc007_fp16_overflow", "cc025"))]
    with tempfile.TemporaryDirectory(prefix="convcheck-gpu-") as tmp:
        runs = [(p, []) for p in examples] + cuda_scripts(Path(tmp), gpus)
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            results = list(pool.map(lambda run: verdict(run[0], run[1], args.device), runs))
    failed = [r for r in results if not r[1]]
    for name, ok, what in results:
        print(f"{'ok  ' if ok else 'FAIL'} {name:<45} {what}")
    print(f"{len(results) - len(failed)} of {len(results)} scripts as expected")
    realistic = [sys.executable, str(REPO / "benchmarks" / "realistic.py"), "--device", args.device,
                 *(["--quick"] if args.quick else ["--rounds", "2"])]
    timed = subprocess.run(realistic, capture_output=True, text=True, timeout=900)
    print(textwrap.indent(timed.stdout, "  "))
    if timed.returncode != 0:
        print(f"FAIL realistic.py exit {timed.returncode}: {timed.stderr.strip()[-500:]}")
    sys.exit(1 if failed or timed.returncode != 0 else 0)


if __name__ == "__main__":
    main()
