"""DDP training that checkpoints after every epoch from rank 0 only; the others wait for the file."""
# convcheck-args: --nproc-per-node 2 --steps 4
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

dist.init_process_group("gloo")
torch.manual_seed(0)
model = DDP(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))

for epoch in range(10):
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    # One writer: the replicas hold the same weights.
    if dist.get_rank() == 0:
        torch.save({"model": model.module.state_dict(), "epoch": epoch}, "checkpoint.pt")
    dist.barrier()
dist.destroy_process_group()
