"""An endless loop that swallows every Exception: convcheck must still stop it."""
import itertools

import torch

w = torch.zeros(3, requires_grad=True)
opt = torch.optim.Adam([w], lr=0.1)
for step in itertools.count():
    try:
        opt.zero_grad()
        loss = ((w - 1) ** 2).sum()
        loss.backward()
        opt.step()
    except Exception:
        pass
