"""DDP training that accumulates gradients over 4 micro-batches: every micro-batch all-reduces."""
# convcheck-args: --nproc-per-node 2 --steps 3
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
        loss = nn.functional.mse_loss(model(x), y)
        # Bug: no model.no_sync() on the first 3 micro-batches, so each backward all-reduces.
        (loss / ACCUM).backward()  # expect: CC023 info
        if (i + 1) % ACCUM == 0:
            opt.step()
            opt.zero_grad()
dist.destroy_process_group()
