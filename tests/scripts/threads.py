"""Prints the OpenMP threads each process was given, then trains a few steps (alone or as a DDP rank)."""
import os

import torch
import torch.distributed as dist
import torch.nn as nn

distributed = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
if distributed:
    dist.init_process_group("gloo")
line = f"THREADS env={os.environ.get('OMP_NUM_THREADS', '-')} torch={torch.get_num_threads()}\n"
os.write(1, line.encode())
model = nn.Linear(4, 1)
if distributed:
    model = nn.parallel.DistributedDataParallel(model)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for _ in range(3):
    loss = model(torch.randn(8, 4)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
