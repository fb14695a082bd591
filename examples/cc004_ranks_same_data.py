"""DDP training with a plain shuffled DataLoader: every rank draws the same samples."""
# convcheck-args: --nproc-per-node 2 --steps 4 --max-batches-per-epoch 2
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset

dist.init_process_group("gloo")
torch.manual_seed(0)
data = TensorDataset(torch.randn(64, 8), torch.randint(0, 2, (64,)))
# Bug: no DistributedSampler, so both ranks (same seed) shuffle the same way and train on the same batches.
loader = DataLoader(data, batch_size=8, shuffle=True)  # expect: CC004 error
model = DDP(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)

for epoch in range(10):
    for x, y in loader:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
dist.destroy_process_group()
