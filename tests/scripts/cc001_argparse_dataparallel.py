"""An argparse script that saves the DataParallel wrapper and loads it non-strictly into the plain model."""
import argparse

import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 8), nn.Tanh())
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


parser = argparse.ArgumentParser()
parser.add_argument("--ckpt", default="net.pth")
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--lr", type=float, default=0.01)
args = parser.parse_args()

torch.manual_seed(1)
net = nn.DataParallel(Net())
optimizer = torch.optim.SGD(net.parameters(), lr=args.lr)
for epoch in range(args.epochs):
    optimizer.zero_grad()
    nn.functional.mse_loss(net(torch.randn(16, 5)), torch.randn(16, 1)).backward()
    optimizer.step()
    torch.save({"epoch": epoch, "net": net.state_dict()}, args.ckpt)

    evaluator = Net()
    checkpoint = torch.load(args.ckpt)
    info = evaluator.load_state_dict(checkpoint["net"], strict=False)
