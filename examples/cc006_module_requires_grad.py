"""Freezing a backbone with `module.requires_grad = False`: a plain attribute, so nothing is frozen."""
# convcheck-args: --steps 4
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
data = TensorDataset(torch.randn(128, 16), torch.randint(0, 4, (128,)))
loader = DataLoader(data, batch_size=16, shuffle=True)
backbone = nn.Sequential(nn.Linear(16, 32), nn.ReLU())
head = nn.Linear(32, 4)
model = nn.Sequential(backbone, head)
# Bug: this sets an attribute on the module; its parameters keep requires_grad=True.
backbone.requires_grad = False  # expect: CC006 error
opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)

for epoch in range(3):
    for x, y in loader:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
