"""DDP-style training (one process per rank, sharded data) whose model is never wrapped in DDP."""
# convcheck-args: --nproc-per-node 2 --steps 6 --max-batches-per-epoch 3
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

BASE_LR = 0.05  # tuned on one process with a batch of 16

dist.init_process_group("gloo")
torch.manual_seed(0)
data = TensorDataset(torch.randn(256, 8), torch.randint(0, 2, (256,)))
sampler = DistributedSampler(data, shuffle=True)
loader = DataLoader(data, batch_size=16, sampler=sampler)
# Bug: the model is not wrapped in DDP, so each rank trains on its own shard without averaging gradients.
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
opt = torch.optim.SGD(model.parameters(), lr=BASE_LR * dist.get_world_size(), momentum=0.9)  # expect: CC013 error

for epoch in range(10):
    sampler.set_epoch(epoch)
    for x, y in loader:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
dist.destroy_process_group()
