"""Gradient accumulation over 4 micro-batches. With --bug, zero_grad() runs at the top of every
micro-batch, so each step sees only the last one. With --lbfgs, LBFGS clears and re-runs backward
inside its closure, as it must. With --sam, a SAM-style two-pass step."""

import sys

import torch
import torch.nn as nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 1))
x, y = torch.randn(256, 10), torch.randn(256, 1)
accum = 4

if "--lbfgs" in sys.argv:
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5)
    for step in range(8):
        def closure():
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss
        opt.step(closure)
    sys.exit(0)

opt = torch.optim.SGD(model.parameters(), lr=0.05)
for step in range(16):
    batch = slice((step % 4) * 64, (step % 4 + 1) * 64)
    if "--sam" in sys.argv:
        opt.zero_grad()
        nn.functional.mse_loss(model(x[batch]), y[batch]).backward()
        with torch.no_grad():
            eps = [0.05 * p.grad / (p.grad.norm() + 1e-12) for p in model.parameters()]
            for p, e in zip(model.parameters(), eps):
                p.add_(e)
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x[batch]), y[batch])
        loss.backward()
        with torch.no_grad():
            for p, e in zip(model.parameters(), eps):
                p.sub_(e)
        opt.step()
        continue
    if "--bug" not in sys.argv:
        opt.zero_grad()
    for micro in range(accum):
        if "--bug" in sys.argv:
            opt.zero_grad()
        part = slice(batch.start + micro * 16, batch.start + (micro + 1) * 16)
        loss = nn.functional.mse_loss(model(x[part]), y[part]) / accum
        loss.backward()
    opt.step()
