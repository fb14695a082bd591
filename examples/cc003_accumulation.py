"""Gradient accumulation over 4 micro-batches with no division by 4: the step is 4x the mean gradient."""
# convcheck-args: --steps 3
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

ACCUM = 4
torch.manual_seed(0)
data = TensorDataset(torch.randn(256, 16), torch.randn(256, 1))
loader = DataLoader(data, batch_size=16, shuffle=True)
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

for epoch in range(3):
    for i, (x, y) in enumerate(loader):
        loss = nn.functional.mse_loss(model(x), y)
        # Bug: the loss of each micro-batch must be divided by ACCUM before backward().
        loss.backward()  # expect: CC003 warning
        if (i + 1) % ACCUM == 0:
            opt.step()
            opt.zero_grad()
