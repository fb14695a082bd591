"""DDP training of a small conv net normalized with GroupNorm, which does not depend on the batch size."""
# convcheck-args: --nproc-per-node 2 --steps 4 --max-batches-per-epoch 2
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

dist.init_process_group("gloo")
torch.manual_seed(0)
data = TensorDataset(torch.randn(64, 3, 16, 16), torch.randint(0, 10, (64,)))
sampler = DistributedSampler(data, shuffle=True)
loader = DataLoader(data, batch_size=4, sampler=sampler)  # 4 images per process
net = nn.Sequential(
    nn.Conv2d(3, 8, 3, padding=1),
    nn.GroupNorm(2, 8),
    nn.ReLU(),
    nn.AdaptiveAvgPool2d(1),
    nn.Flatten(),
    nn.Linear(8, 10),
)
# GroupNorm normalizes each sample on its own (SyncBatchNorm is the choice on GPUs).
model = DDP(net)
opt = torch.optim.Adam(model.parameters(), lr=1e-3 * dist.get_world_size() ** 0.5)

for epoch in range(10):
    sampler.set_epoch(epoch)
    for x, y in loader:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
dist.destroy_process_group()
