"""A DDP trainer that checkpoints through a helper writing to an open file, each epoch.

--per-rank: each rank writes its own file; --dcp: torch.distributed.checkpoint (every rank takes part).
"""
import argparse
import os

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel


def write_checkpoint(state, folder, name):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as handle:
        torch.save(state, handle)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-rank", action="store_true")
    parser.add_argument("--dcp", action="store_true")
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(1)
    net = DistributedDataParallel(nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3)))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    inputs, targets = torch.randn(64, 6), torch.randint(0, 3, (64,))
    for epoch in range(5):
        for start in range(0, 64, 32):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(net(inputs[start:start + 32]), targets[start:start + 32])
            loss.backward()
            optimizer.step()
        if args.dcp:
            dcp.save({"model": net.module.state_dict()}, checkpoint_id=f"runs/dcp_epoch{epoch}")
        elif args.per_rank:
            write_checkpoint(net.module.state_dict(), "runs", f"ckpt_rank{rank}.pt")
        else:
            write_checkpoint(net.module.state_dict(), "runs", "latest.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
