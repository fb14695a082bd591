"""Inputs and labels in two DataLoaders, each shuffled on its own and zipped: every input gets a random label."""
# convcheck-args: --steps 6
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
X = torch.randn(512, 10)
Y = (X[:, 0] > 0).long()
# Bug: two loaders, two independent shuffles; zip() pairs an input with another sample's label.
inputs = DataLoader(TensorDataset(X), batch_size=32, shuffle=True)
labels = DataLoader(TensorDataset(Y), batch_size=32, shuffle=True)  # expect: CC012 warning
model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
opt = torch.optim.Adam(model.parameters(), lr=1e-2)

for epoch in range(5):
    for (x,), (y,) in zip(inputs, labels):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
