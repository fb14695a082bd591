"""Validation in a helper leaves the model in eval mode; the epoch loop never switches it back.

An epoch is 50 batches: without shortened epochs the default 20 steps never reach the first validation.
"""
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset


def evaluate(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
    return correct / len(loader.dataset)


def train_one_epoch(model: nn.Module, loader: DataLoader, opt: torch.optim.Optimizer) -> None:
    for x, y in loader:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


torch.manual_seed(0)
train = DataLoader(TensorDataset(torch.randn(800, 10), torch.randint(0, 3, (800,))), batch_size=16, shuffle=True)
val = DataLoader(TensorDataset(torch.randn(64, 10), torch.randint(0, 3, (64,))), batch_size=32)
model = nn.Sequential(nn.Linear(10, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 3))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
for epoch in range(4):
    train_one_epoch(model, train, opt)
    print(f"epoch {epoch} accuracy {evaluate(model, val):.2f}")
