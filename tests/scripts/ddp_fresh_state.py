"""DDP script that prints, per rank, what a process starts with: modules already imported, RNG state, its environment."""
import os
import random
import sys

PRELOADED = "torch" in sys.modules

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn as nn  # noqa: E402

dist.init_process_group("gloo")
rank = dist.get_rank()
line = (
    f"STATE rank={rank} env_rank={os.environ['RANK']} local_rank={os.environ['LOCAL_RANK']} preloaded={PRELOADED} "
    f"torch_seed={torch.initial_seed()} numpy={np.random.randint(2**31)} python={random.getrandbits(64)} "
    f"hash={hash('convcheck')} parent={os.getppid()} session_leader={os.getsid(0) == os.getpid()} "
    f"stdin_empty={sys.stdin.read() == ''} cwd={os.getcwd()}\n"
)
os.write(1, line.encode())  # one write: the ranks share the terminal
model = nn.parallel.DistributedDataParallel(nn.Linear(4, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for _ in range(3):
    loss = model(torch.randn(8, 4)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
