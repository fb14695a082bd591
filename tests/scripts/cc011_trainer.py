"""A Trainer that steps an ExponentialLR (gamma per epoch) after every batch, through a helper method (CC011)."""
import argparse

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset


class Trainer:
    def __init__(self, epochs: int, lr: float) -> None:
        torch.manual_seed(0)
        self.model = nn.Linear(8, 1)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.sched = torch.optim.lr_scheduler.ExponentialLR(self.opt, gamma=0.7)
        self.loader = DataLoader(TensorDataset(torch.randn(512, 8), torch.randn(512, 1)), batch_size=32)
        self.epochs = epochs

    def update(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.sched.step()

    def fit(self) -> None:
        for _ in range(self.epochs):
            for x, y in self.loader:
                self.update(nn.functional.mse_loss(self.model(x), y))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()
    Trainer(args.epochs, args.lr).fit()
