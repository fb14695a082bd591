"""Trains three steps, then crashes."""
import torch

w = torch.zeros(3, requires_grad=True)
opt = torch.optim.SGD([w], lr=0.1)
for step in range(100):
    opt.zero_grad()
    ((w - 1) ** 2).sum().backward()
    opt.step()
    if step == 2:
        raise RuntimeError("boom at step 3")
