"""A CUDA DDP script that converts its batch norm to SyncBatchNorm (GPU-only)."""
import os, torch, torch.nn as nn, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
dist.init_process_group("nccl")
rank = int(os.environ["LOCAL_RANK"])
model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))
model = nn.SyncBatchNorm.convert_sync_batchnorm(model).cuda(rank)
model = DDP(model, device_ids=[rank])
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for _ in range(10):
    opt.zero_grad()
    model(torch.randn(16, 4).cuda()).pow(2).mean().backward()
    opt.step()
