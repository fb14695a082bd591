"""A hand-written batching loop that shuffles inputs and labels with two separate permutations (CC012).

--mode two: one torch.randperm for the inputs, another for the labels: every input gets a random label.
--mode reshuffled: the whole tensors are shuffled apart once per epoch, batches are slices of them.
--mode one: the fixed twin, one permutation for both.
"""
import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

parser = argparse.ArgumentParser()
parser.add_argument("--mode", choices=["two", "reshuffled", "one"], default="two")
mode = parser.parse_args().mode

torch.manual_seed(0)
N, B = 512, 32
X = torch.randn(N, 10)
Y = (X[:, :3].sum(1) > 0).long()
model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.1)

for epoch in range(5):
    if mode == "reshuffled":
        Xs = X[torch.randperm(N)]
        Ys = Y[torch.randperm(N)]  # bug: a second permutation for the labels
    px = torch.randperm(N)
    py = torch.randperm(N) if mode == "two" else px  # bug (--mode two): a second permutation
    for i in range(0, N, B):
        if mode == "reshuffled":
            x, y = Xs[i:i + B], Ys[i:i + B]
        else:
            x = X[px[i:i + B]]
            y = Y[py[i:i + B]]
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
