"""A regression model whose output [B, 1] is compared with a target [B]: the loss broadcasts to [B, B]."""
# convcheck-args: --steps 6
import torch
import torch.nn as nn

torch.manual_seed(0)
x = torch.randn(256, 8)
y = x @ torch.randn(8) + 0.1 * torch.randn(256)  # shape [256]
model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
criterion = nn.MSELoss()

for epoch in range(10):
    for i in range(0, 256, 32):
        opt.zero_grad()
        out = model(x[i:i + 32])
        # Bug: out is [32, 1] and the target is [32]; they broadcast to [32, 32].
        loss = criterion(out, y[i:i + 32])  # expect: CC012 error
        loss.backward()
        opt.step()
