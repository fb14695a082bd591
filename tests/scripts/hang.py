"""Trains one step, then hangs."""
import time

import torch

w = torch.zeros(3, requires_grad=True)
opt = torch.optim.SGD([w], lr=0.1)
opt.zero_grad()
((w - 1) ** 2).sum().backward()
opt.step()
while True:
    time.sleep(0.1)  # stuck here
