"""Asks its user a question before training, as some scripts do (`input()`)."""

import sys

import torch

answer = input("Resume from the last checkpoint? [y/n] ")
print("isatty", sys.stdin.isatty(), "answer", answer)
torch.manual_seed(0)
w = torch.zeros(3, requires_grad=True)
opt = torch.optim.SGD([w], lr=0.1)
for _ in range(3):
    opt.zero_grad()
    ((w - 1) ** 2).sum().backward()
    opt.step()
