"""Raw sensor readings reach 1e5: under fp16 autocast the first layer overflows (fp16 stops at 65504)."""
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
        # Bug: fp16 cannot hold these activations; bfloat16 has fp32's range.
        with torch.autocast("cpu", dtype=torch.float16):
            loss = nn.functional.cross_entropy(model(xb), yb)  # expect: CC007 error
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
