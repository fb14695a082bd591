"""DDP training whose DistributedSampler never gets set_epoch: every epoch sees the same order."""
# convcheck-args: --nproc-per-node 2 --steps 8 --max-batches-per-epoch 2
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

dist.init_process_group("gloo")
torch.manual_seed(0)
data = TensorDataset(torch.randn(64, 8), torch.randint(0, 2, (64,)))
sampler = DistributedSampler(data, shuffle=True, seed=0)
loader = DataLoader(data, batch_size=8, sampler=sampler)
model = DDP(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)

for epoch in range(10):  # expect: CC004 error
    # Bug: no sampler.set_epoch(epoch) here, so the shuffle is the same every epoch.
    for x, y in loader:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
dist.destroy_process_group()
