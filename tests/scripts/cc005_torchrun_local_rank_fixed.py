"""A torchrun script that reads LOCAL_RANK, takes flags, and warms SGD up to a linearly scaled lr."""
import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


def get_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-lr", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--accum", type=int, default=2)
    return parser.parse_args()


args = get_args()
local_rank = int(os.environ["LOCAL_RANK"])
dist.init_process_group(backend="gloo")
torch.manual_seed(0)
dataset = TensorDataset(torch.randn(128, 4), torch.randn(128, 1))
sampler = DistributedSampler(dataset)
loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler)
model = DistributedDataParallel(nn.Linear(4, 1))
scale = dist.get_world_size() * args.accum
optimizer = torch.optim.SGD(model.parameters(), lr=args.base_lr * scale, momentum=0.9)
warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.25, total_iters=10)

for epoch in range(5):
    sampler.set_epoch(epoch)
    for i, (x, y) in enumerate(loader):
        loss = nn.functional.mse_loss(model(x), y) / args.accum
        loss.backward()
        if (i + 1) % args.accum == 0:
            optimizer.step()
            optimizer.zero_grad()
            warmup.step()
dist.destroy_process_group()
