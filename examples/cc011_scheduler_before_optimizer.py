"""The scheduler is stepped at the start of each epoch, before the optimizer ever stepped (the pre-1.1 order)."""
# convcheck-args: --steps 8
import torch
import torch.nn as nn

torch.manual_seed(0)
x, y = torch.randn(64, 10), torch.randint(0, 2, (64,))
model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
# Warm up over the first 5 epochs: lr 0.02, 0.04, ... 0.1.
scheduler = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.2, total_iters=4)

for epoch in range(10):
    scheduler.step()  # expect: CC011 error
    for i in range(0, 64, 16):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[i:i + 16]), y[i:i + 16]).backward()
        opt.step()
    # Bug: the scheduler belongs here, after the epoch's optimizer steps, not at the top.
