"""A binary classifier whose forward() ends in a sigmoid, trained with BCEWithLogitsLoss (CC010).

The softmax/sigmoid used for the accuracy metric is fine."""
import argparse

import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, hidden), nn.Sigmoid(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        return torch.sigmoid(h).squeeze(1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    net = Net(args.hidden)
    loss_fn = nn.BCEWithLogitsLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(512, 16), torch.randint(0, 2, (512,)).float()
    for start in range(0, 512, 64):
        scores = net(x[start:start + 64])
        loss = loss_fn(scores, y[start:start + 64])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        accuracy = ((torch.sigmoid(scores) > 0.5).float() == y[start:start + 64]).float().mean()
        print(f"loss {loss.item():.3f} accuracy {accuracy:.2f}")


if __name__ == "__main__":
    main()
