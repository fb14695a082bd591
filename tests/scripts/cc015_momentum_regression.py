"""Linear regression on unnormalized features with SGD + momentum; --lr 0.5 explodes to inf/NaN in float32,
the default lr trains. Batches come from a DataLoader, the loss is a hand-written mean squared error."""

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=1e-4)
args = parser.parse_args()

torch.manual_seed(1)
features = torch.randn(1024, 12) * 10.0 + 3.0
targets = features @ torch.linspace(-1, 1, 12) + torch.randn(1024)
loader = DataLoader(TensorDataset(features, targets), batch_size=64, shuffle=True)


class Regressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(12, 16)
        self.out = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(x) / 10.0) * 10.0).squeeze(-1)


net = Regressor()
sgd = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)
for epoch in range(30):
    for xb, yb in loader:
        error = net(xb) - yb
        loss = (error * error).mean()
        sgd.zero_grad()
        loss.backward()
        sgd.step()
    print(f"epoch {epoch}: {loss.item():.4g}")
