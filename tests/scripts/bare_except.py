"""A training loop that swallows even BaseException with a bare except."""
import torch

w = torch.zeros(3, requires_grad=True)
opt = torch.optim.SGD([w], lr=0.1)
while True:
    try:
        opt.zero_grad()
        ((w - 1) ** 2).sum().backward()
        opt.step()
    except:  # noqa: E722
        continue
