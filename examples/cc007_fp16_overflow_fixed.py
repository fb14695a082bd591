"""Raw sensor readings reach 1e5: bfloat16 autocast holds them (its range is fp32's)."""
# convcheck-args: --steps 8
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
x = torch.randn(256, 16)
x[::40] *= 1e5  # a few readings in raw units
data = TensorDataset(x, torch.randint(0, 4, (256,)))
loader = DataLoader(data, batch_size=16, shuffle=True)
model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
scaler = torch.amp.GradScaler("cpu")

for epoch in range(3):
    for xb, yb in loader:
        opt.zero_grad()
        # bfloat16 has fp32's range: no overflow (the scaler is then optional).
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(xb), yb)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
