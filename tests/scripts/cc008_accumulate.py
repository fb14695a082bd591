"""Intended gradient accumulation (4 micro-batches per step), gradients cleared by hand with p.grad = None."""
import argparse

import torch
import torch.nn as nn

parser = argparse.ArgumentParser()
parser.add_argument("--accum", type=int, default=4)
args = parser.parse_args()

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
x, y = torch.randn(512, 8), torch.randint(0, 2, (512,))
for i in range(0, 512, 8):
    loss = nn.functional.cross_entropy(model(x[i:i + 8]), y[i:i + 8]) / args.accum
    loss.backward()
    if (i // 8 + 1) % args.accum == 0:
        opt.step()
        for p in model.parameters():
            p.grad = None
