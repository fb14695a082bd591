"""torchrun-style DDP whose wrapped model is cast after wrapping (--bug: `ddp.double()`), so the
parameters DDP hooked are replaced; --cuda-only: wrapped on GPUs only; the fixed twin casts before wrapping."""

import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
if "--bug" in sys.argv:
    ddp = DDP(model)
    ddp.double()
elif "--cuda-only" in sys.argv:
    # Wrapped only on a GPU machine: on the CPU the model trains unwrapped.
    ddp = DDP(model.double()) if torch.cuda.is_available() else model.double()
else:
    ddp = DDP(model.double())
opt = torch.optim.SGD(ddp.parameters(), lr=0.01 * world)
gen = torch.Generator().manual_seed(rank)
for step in range(10):
    x = torch.randn(16, 8, generator=gen, dtype=torch.float64)
    loss = nn.functional.mse_loss(ddp(x), x.sum(1, keepdim=True))
    opt.zero_grad()
    loss.backward()
    opt.step()
dist.destroy_process_group()
