"""DDP training on a train/test split that every rank draws for itself."""
# convcheck-args: --nproc-per-node 2 --steps 4
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset, random_split

dist.init_process_group("gloo")
torch.manual_seed(1234 + dist.get_rank())  # a random stream of its own per rank
data = TensorDataset(torch.linspace(-1, 1, 100)[:, None], torch.linspace(-1, 1, 100)[:, None] ** 2)
# Bug: the split draws from each rank's own stream: one rank trains on the other's test samples.
train, test = random_split(data, [80, 20])  # expect: CC018 error
sampler = DistributedSampler(train, shuffle=True)
loader = DataLoader(train, batch_size=8, sampler=sampler)
model = DDP(nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1)))
opt = torch.optim.SGD(model.parameters(), lr=0.05 * dist.get_world_size())

for epoch in range(3):
    sampler.set_epoch(epoch)
    for x, y in loader:
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
dist.destroy_process_group()
