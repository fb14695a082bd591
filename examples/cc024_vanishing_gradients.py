"""A 20-layer sigmoid MLP with default initialization: the gradient shrinks at every layer on its way down."""
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
x = torch.randn(512, 32)
y = (x[:, :8].sum(1) > 0).long()
layers = [nn.Linear(32, 64), nn.Sigmoid()]
for _ in range(18):
    # Bug: sigmoid's slope is at most 0.25; 20 of them shrink the gradient by orders of magnitude.
    layers += [nn.Linear(64, 64), nn.Sigmoid()]
model = nn.Sequential(*layers, nn.Linear(64, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.1)

for epoch in range(10):
    for i in range(0, 512, 64):
        out = model(x[i:i + 64])  # expect: CC024 warning
        loss = F.cross_entropy(out, y[i:i + 64])
        opt.zero_grad()
        loss.backward()
        opt.step()
