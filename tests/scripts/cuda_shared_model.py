"""A correct mp.spawn DDP script written for CUDA: the model is built once in the parent and
passed to every rank, which moves it to its own GPU (a private copy there), then an offload
round trip keeps a CPU copy of a weight while its GPU storage is freed."""

import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP


def train(rank, world_size, port, model):
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    torch.cuda.set_device(rank)
    model = model.to(rank)
    ddp = DDP(model, device_ids=[rank])
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05 * world_size)
    gen = torch.Generator().manual_seed(100 + rank)
    for step in range(30):
        x = torch.randn(16, 8, generator=gen).to(rank)
        y = x.sum(dim=1, keepdim=True)
        loss = nn.functional.mse_loss(ddp(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        # Offload: keep a host copy, free the device storage, bring it back.
        host = model[0].weight.data.cpu()
        model[0].weight.data.untyped_storage().resize_(0)
        model[0].weight.data = host.to(rank)
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.manual_seed(0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    mp.spawn(train, args=(2, port, model), nprocs=2, join=True)
    print("done", file=sys.stderr)
