"""torchrun-style DDP: an MLP with BatchNorm1d built in a function, per-process batch from --batch-size (CC014)."""
import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


def build(width: int) -> nn.Module:
    layers = []
    for _ in range(2):
        layers += [nn.LazyLinear(width), nn.BatchNorm1d(width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=2)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = build(32)
    model(torch.randn(2, 5))  # materialize the lazy layer before DDP
    model = DistributedDataParallel(model)
    data = TensorDataset(torch.randn(200, 5), torch.randn(200, 1))
    sampler = DistributedSampler(data, seed=int(os.environ.get("SEED", "0")))
    loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler, drop_last=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3 * dist.get_world_size() ** 0.5)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for x, y in loader:
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
