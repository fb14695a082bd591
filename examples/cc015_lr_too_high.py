"""A small classifier trained with AdamW at lr=20: every step overshoots and the loss climbs."""
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
x = torch.randn(512, 20)
y = (x[:, :5].sum(1) > 0).long() + (x[:, 5:10].sum(1) > 0).long()  # 3 classes
model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
# Bug: lr=20 moves every weight by about 20 per step, far more than the weights themselves.
opt = torch.optim.AdamW(model.parameters(), lr=20)  # expect: CC015 error

for epoch in range(10):
    for i in range(0, 512, 32):
        loss = F.cross_entropy(model(x[i:i + 32]), y[i:i + 32])
        opt.zero_grad()
        loss.backward()
        opt.step()
        print(f"step loss {loss.item():.4g}")
