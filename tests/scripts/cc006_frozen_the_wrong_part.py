"""Fine-tuning that freezes the wrong part: the optimizer is built over the head, then the head is frozen
instead of the backbone (--bug). The fixed twin freezes the backbone."""

import sys

import torch
import torch.nn as nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
backbone, head = model[0], model[2]
opt = torch.optim.SGD(head.parameters(), lr=0.1)
if "--bug" in sys.argv:
    head.requires_grad_(False)
else:
    backbone.requires_grad_(False)
x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
for step in range(10):
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
