"""Hogwild: two processes train one model held in shared memory, without locks, each seeded."""

import torch
import torch.multiprocessing as mp
import torch.nn as nn


def train(rank, model):
    torch.manual_seed(1 + rank)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    data = torch.randn(512, 16)
    target = data.sum(1, keepdim=True)
    for step in range(40):
        batch = slice((step % 16) * 32, (step % 16 + 1) * 32)
        opt.zero_grad()
        nn.functional.mse_loss(model(data[batch]), target[batch]).backward()
        opt.step()


if __name__ == "__main__":
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1))
    model.share_memory()
    workers = [mp.Process(target=train, args=(rank, model)) for rank in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
