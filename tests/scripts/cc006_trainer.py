"""A Trainer that loads a 'pretrained' model and swaps its classification head for the new task.

--head-first swaps the head before the optimizer is built (correct); --ema keeps an EMA copy of the model
(never in an optimizer, never given gradients: not a finding); --unused adds an auxiliary head that the
forward pass never calls.
"""
import argparse
import copy

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset


class Classifier(nn.Module):
    def __init__(self, classes: int, unused: bool) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(12, 24), nn.GELU())
        self.fc = nn.Linear(24, classes)
        if unused:
            self.aux = nn.Linear(24, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class Trainer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.model = Classifier(classes=10, unused=args.unused)
        if args.head_first:
            self.model.fc = nn.Linear(24, 3)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        if not args.head_first:
            self.model.fc = nn.Linear(24, 3)  # new task: 3 classes
        self.ema = copy.deepcopy(self.model) if args.ema else None
        data = TensorDataset(torch.randn(96, 12), torch.randint(0, 3, (96,)))
        self.loader = DataLoader(data, batch_size=12, shuffle=True)

    def fit(self) -> None:
        for _ in range(3):
            for x, y in self.loader:
                self.optimizer.zero_grad()
                loss = nn.functional.cross_entropy(self.model(x), y)
                loss.backward()
                self.optimizer.step()
                if self.ema is not None:
                    with torch.no_grad():
                        for e, p in zip(self.ema.parameters(), self.model.parameters()):
                            e.mul_(0.99).add_(p, alpha=0.01)
                        self.ema(x)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--head-first", action="store_true")
    parser.add_argument("--ema", action="store_true")
    parser.add_argument("--unused", action="store_true")
    torch.manual_seed(0)
    Trainer(parser.parse_args()).fit()
