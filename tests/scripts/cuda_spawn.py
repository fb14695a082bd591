"""An mp.spawn DDP script written for CUDA, with a Trainer class that snapshots to disk."""
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP


class Trainer:
    def __init__(self, rank, snapshot_path):
        self.rank = rank
        self.device = torch.device(f"cuda:{rank}")
        self.model = nn.Linear(16, 4).to(self.device)
        self.snapshot_path = snapshot_path
        if os.path.exists(snapshot_path):
            snapshot = torch.load(snapshot_path, map_location=f"cuda:{rank}")
            self.model.load_state_dict(snapshot["model"])
        self.model = DDP(self.model, device_ids=[rank], output_device=rank)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.scaler = torch.amp.GradScaler("cuda")

    def train(self, steps):
        for step in range(steps):
            x = torch.randn(32, 16, device=self.device)
            y = torch.randint(0, 4, (32,), device="cuda")
            with torch.autocast("cuda"):
                loss = nn.functional.cross_entropy(self.model(x), y)
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
            if self.rank == 0 and step % 5 == 0:
                torch.save({"model": self.model.module.state_dict(), "step": step}, self.snapshot_path)


def main(rank, world_size, port, snapshot_path):
    dist.init_process_group(backend="nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    torch.cuda.set_device(rank)
    Trainer(rank, snapshot_path).train(100)
    dist.destroy_process_group()


if __name__ == "__main__":
    import socket
    import sys

    assert torch.cuda.is_available(), "this script needs a GPU"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    world_size = torch.cuda.device_count()
    mp.spawn(main, args=(world_size, port, sys.argv[1]), nprocs=world_size)
