"""A classifier whose middle layer starts with a bias of -20: its ReLU is zero for every sample, and nothing
below it gets a gradient. --functional: the ReLU is F.relu inside forward(); --healthy: the bias starts at 0."""

import sys

import torch
import torch.nn.functional as F
from torch import nn

FUNCTIONAL = "--functional" in sys.argv


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(10, 48)
        self.act1 = nn.ReLU()
        self.middle = nn.Linear(48, 48)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(48, 5)
        if "--healthy" not in sys.argv:
            nn.init.constant_(self.middle.bias, -20.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act1(self.embed(x))
        h = F.relu(self.middle(h)) if FUNCTIONAL else self.act2(self.middle(h))
        return self.head(h)


torch.manual_seed(3)
net = Net()
optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
data = torch.randn(2048, 10)
labels = data[:, :5].argmax(1)
for start in range(0, 2048, 32):
    logits = net(data[start:start + 32])
    loss = F.cross_entropy(logits, labels[start:start + 32])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
