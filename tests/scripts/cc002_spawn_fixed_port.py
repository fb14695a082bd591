"""mp.spawn DDP that sets MASTER_PORT itself: a repeat run beside the main one would take the same port.

A template: the test puts a port that is free at that moment in place of @PORT@.
"""
import os
import torch, torch.nn as nn, torch.distributed as dist, torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

def worker(rank, world):
    os.environ["MASTER_ADDR"] = "localhost"
    os.environ["MASTER_PORT"] = "@PORT@"
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = DDP(nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(16, 4); y = torch.randint(0, 2, (16,))
    for it in range(20):
        opt.zero_grad(); nn.functional.cross_entropy(model(x), y).backward(); opt.step()
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(worker, args=(2,), nprocs=2)
