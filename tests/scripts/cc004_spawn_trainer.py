"""A Trainer class started with mp.spawn that never tells its DistributedSampler the epoch."""
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler


class Trainer:
    def __init__(self, rank: int, world_size: int) -> None:
        self.rank = rank
        torch.manual_seed(0)
        self.model = DistributedDataParallel(nn.Linear(6, 3))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=3e-4)
        data = TensorDataset(torch.randn(48, 6), torch.randint(0, 3, (48,)))
        self.loader = DataLoader(
            data,
            batch_size=6,
            sampler=DistributedSampler(data, num_replicas=world_size, rank=rank),
        )

    def train_epoch(self, epoch: int) -> None:
        for x, y in self.loader:
            self.optimizer.zero_grad()
            nn.functional.cross_entropy(self.model(x), y).backward()
            self.optimizer.step()


def main(rank: int, world_size: int, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    trainer = Trainer(rank, world_size)
    for epoch in range(20):
        trainer.train_epoch(epoch)
    dist.destroy_process_group()


if __name__ == "__main__":
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    mp.spawn(main, args=(2, free_port), nprocs=2)
