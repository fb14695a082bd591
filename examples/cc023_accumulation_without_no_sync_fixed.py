"""DDP training that accumulates gradients over 4 micro-batches: only the last one all-reduces."""
# convcheck-args: --nproc-per-node 2 --steps 3
import contextlib

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

ACCUM = 4
dist.init_process_group("gloo")
torch.manual_seed(0)
data = TensorDataset(torch.randn(512, 16), torch.randn(512, 1))
sampler = DistributedSampler(data)
loader = DataLoader(data, batch_size=8, sampler=sampler)
model = DDP(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1)))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

for epoch in range(3):
    sampler.set_epoch(epoch)
    for i, (x, y) in enumerate(loader):
        last = (i + 1) % ACCUM == 0
        # Gradients stay local until the last micro-batch, whose backward all-reduces their sum.
        with contextlib.nullcontext() if last else model.no_sync():
            loss = nn.functional.mse_loss(model(x), y)
            (loss / ACCUM).backward()
        if last:
            opt.step()
            opt.zero_grad()
dist.destroy_process_group()
