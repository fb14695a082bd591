"""torchrun-style DDP trainer whose loop calls the wrapped module directly (ddp.module(x)): no gradient sync (CC013).

With --ok the wrapper itself is called."""
import argparse

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel


class Trainer:
    def __init__(self, ok: bool) -> None:
        dist.init_process_group("gloo")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        torch.manual_seed(1234)
        self.net = DistributedDataParallel(nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 1)))
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-3 * self.world ** 0.5)
        self.forward = self.net if ok else self.net.module
        self.gen = torch.Generator().manual_seed(self.rank)

    def run(self, iterations: int) -> None:
        for _ in range(iterations):
            x, y = torch.randn(16, 6, generator=self.gen), torch.randn(16, 1, generator=self.gen)
            self.opt.zero_grad()
            nn.functional.mse_loss(self.forward(x), y).backward()
            self.opt.step()
        dist.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--ok", action="store_true")
    Trainer(parser.parse_args().ok).run(100)
