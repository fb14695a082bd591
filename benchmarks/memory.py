"""Peak memory (RSS) of a training process with the probe vs without, side by side in one run.

    python benchmarks/memory.py            # three model sizes
    python benchmarks/memory.py --quick    # one small size (CI smoke run)

Each measurement runs the same training script in a fresh process and reads that process's
peak RSS; the instrumented one is the process convcheck's launcher would start, with the
probe loaded through its site folder. Target: <= 1.10x.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

SCRIPT = '''
import sys, torch, torch.nn as nn
width, steps = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(512, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
x, y = torch.randn(64, 512), torch.randint(0, 10, (64,))
for _ in range(steps):
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
'''


def peak_rss_mb(cmd: list[str], env: dict[str, str]) -> float:
    """Peak RSS of one child process, in MB (measured by a fresh wrapper so nothing else counts)."""
    wrapper = (
        "import resource, subprocess, sys\n"
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    """Print peak RSS plain vs instrumented for each model size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes = [512] if args.quick else [512, 2048, 4096]
    steps = 12
    from convcheck.runtime import env as names
    from convcheck.runtime.launcher import site_dir

    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "train.py"
        script.write_text(SCRIPT)
        plain_env = dict(os.environ)
        probed_env = dict(os.environ)
        probed_env["PYTHONPATH"] = os.pathsep.join(filter(None, [site_dir(), os.environ.get("PYTHONPATH")]))
        (Path(tmp) / "trace").mkdir()
        probed_env[names.TRACE_DIR] = str(Path(tmp) / "trace")
        probed_env[names.STEPS] = str(10**6)
        print(f"peak RSS of one training process, {steps} Adam steps")
        for width in sizes:
            params_mb = (512 * width + width * width + width * 10) * 4 / 2**20
            plain = peak_rss_mb([sys.executable, str(script), str(width), str(steps)], plain_env)
            probed = peak_rss_mb(
                [sys.executable, "-m", "convcheck.runtime.worker", str(script), str(width), str(steps)], probed_env
            )
            print(f"width {width:>5} ({params_mb:6.1f} MB of parameters)  plain {plain:7.1f} MB   "
                  f"instrumented {probed:7.1f} MB   ratio {probed / plain:.3f}")


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
