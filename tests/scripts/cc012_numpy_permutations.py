"""Inputs and labels drawn from torch tensors with two numpy permutations (CC012); --one: the fixed twin."""
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

rng = np.random.default_rng(0)
torch.manual_seed(0)
N, B = 256, 16
X = torch.randn(N, 6)
Y = torch.randint(0, 3, (N,))
model = nn.Linear(6, 3)
opt = torch.optim.SGD(model.parameters(), lr=0.1)

for epoch in range(3):
    px = rng.permutation(N)
    py = px if "--one" in sys.argv else rng.permutation(N)  # bug without --one: a second permutation
    for i in range(0, N, B):
        x, y = X[px[i:i + B]], Y[py[i:i + B]]
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
