"""A torchrun-style DDP script written with the device-agnostic torch.accelerator API, as current
PyTorch examples are: it needs an accelerator and says so when there is none."""

import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

if not torch.accelerator.is_available():
    print("This example needs an accelerator; none found, exiting.")
    sys.exit(0)
local_rank = int(os.environ["LOCAL_RANK"])
torch.accelerator.set_device_index(local_rank)
device = torch.accelerator.current_accelerator()
backend = dist.get_default_backend_for_device(device)
dist.init_process_group(backend)
torch.manual_seed(0)
model = DDP(nn.Linear(8, 1).to(device), device_ids=[local_rank])
opt = torch.optim.SGD(model.parameters(), lr=0.01 * dist.get_world_size())
gen = torch.Generator().manual_seed(dist.get_rank())
for step in range(6):
    x = torch.randn(16, 8, generator=gen).to(device)
    loss = nn.functional.mse_loss(model(x), x.sum(1, keepdim=True))
    opt.zero_grad()
    loss.backward()
    opt.step()
    torch.accelerator.synchronize()
dist.destroy_process_group()
