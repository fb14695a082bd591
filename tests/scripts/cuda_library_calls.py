"""CUDA calls a library makes (here the standard library's ExitStack) and one the script makes itself."""
import contextlib

import torch

torch.manual_seed(0)

model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(3):
    with contextlib.ExitStack() as stack:
        stack.callback(torch.cuda.empty_cache)  # called by contextlib, not by this line
        opt.zero_grad()
        model(torch.randn(8, 4).cuda()).sum().backward()
        opt.step()
torch.cuda.synchronize()
