"""DDP training that checkpoints after every epoch from every rank: both ranks write one file at once."""
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
    # Bug: no rank guard, so every rank writes checkpoint.pt at the same moment.
    torch.save({"model": model.module.state_dict(), "epoch": epoch}, "checkpoint.pt")  # expect: CC021 warning
dist.destroy_process_group()
