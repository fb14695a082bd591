"""torchrun-style DDP that peeks at one batch (`next(iter(loader))`) to read its size before training,
then calls set_epoch every epoch, as it should (--bug: never)."""

import sys

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

dist.init_process_group("gloo")
torch.manual_seed(0)
data = TensorDataset(torch.randn(256, 8), torch.randn(256, 1))
sampler = DistributedSampler(data)
loader = DataLoader(data, batch_size=16, sampler=sampler)
batch_size = len(next(iter(loader))[0])
model = DDP(nn.Linear(8, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01 * dist.get_world_size())
for epoch in range(4):
    if "--bug" not in sys.argv:
        sampler.set_epoch(epoch)
    for x, y in loader:
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
dist.destroy_process_group()
