"""Runs whose loss turns NaN for good. --half: the model trained in float16 itself with Adam's default
eps; --diverge: float32 SGD at a learning rate that blows up. With neither flag: a sane float32 run."""

import sys

import torch
import torch.nn as nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
if "--half" in sys.argv:
    model = model.half()
lr = 50.0 if "--diverge" in sys.argv else 1e-3
opt = torch.optim.Adam(model.parameters(), lr=1e-3) if "--half" in sys.argv else torch.optim.SGD(
    model.parameters(), lr=lr)
dtype = next(model.parameters()).dtype
for step in range(20):
    x = (torch.randn(32, 16) * 3).to(dtype)
    y = torch.randint(0, 4, (32,))
    loss = nn.functional.cross_entropy(model(x).float(), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
