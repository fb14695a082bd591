"""A Trainer class with argparse flags; --sum switches to a sum-reduced loss (then dividing is right)."""
import argparse

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset


class Trainer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.model = nn.Sequential(nn.Linear(10, 20), nn.Tanh(), nn.Linear(20, 3))
        self.criterion = nn.CrossEntropyLoss(reduction="sum" if args.sum else "mean")
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)
        data = TensorDataset(torch.randn(128, 10), torch.randint(0, 3, (128,)))
        self.loader = DataLoader(data, batch_size=args.batch_size, shuffle=True, drop_last=True)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.opt.zero_grad(set_to_none=True)
        loss = self.criterion(self.model(x), y) / self.args.batch_size
        loss.backward()
        self.opt.step()
        return loss.item()

    def fit(self, epochs: int) -> None:
        for _ in range(epochs):
            for x, y in self.loader:
                self.train_step(x, y)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--sum", action="store_true")
    torch.manual_seed(0)
    Trainer(parser.parse_args()).fit(epochs=2)
