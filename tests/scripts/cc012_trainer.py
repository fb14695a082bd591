"""A Trainer with two ways to make the loss unable to go down (CC012).

--mode detached: the loss is rebuilt from a Python float, so backward() reaches no parameter.
--mode broadcast: l1_loss between an output [B, 1] and a target [B].
"""
import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F


class Trainer:
    def __init__(self, mode: str) -> None:
        torch.manual_seed(0)
        self.mode = mode
        self.model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05)

    def compute_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pred = self.model(x)
        if self.mode == "broadcast":
            return F.l1_loss(pred, y)
        loss = F.l1_loss(pred.squeeze(1), y)
        return torch.tensor(loss.item(), requires_grad=True)  # "for logging"

    def fit(self) -> None:
        x, y = torch.randn(256, 4), torch.randn(256)
        for i in range(0, 256, 16):
            loss = self.compute_loss(x[i:i + 16], y[i:i + 16])
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["detached", "broadcast"], default="detached")
    Trainer(parser.parse_args().mode).fit()
