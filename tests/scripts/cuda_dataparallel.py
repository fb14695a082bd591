"""A single-process script written for several GPUs with nn.DataParallel."""

import torch
import torch.nn as nn

assert torch.cuda.is_available(), "this script needs a GPU"
torch.manual_seed(0)
model = nn.DataParallel(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))).cuda()
opt = torch.optim.SGD(model.parameters(), lr=0.05)
for step in range(8):
    x = torch.randn(32, 8).cuda()
    loss = nn.functional.mse_loss(model(x), x.sum(1, keepdim=True))
    opt.zero_grad()
    loss.backward()
    opt.step()
