"""The seed is set before the model is built: every run starts from the same weights."""
# convcheck-args: --steps 4
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

data = TensorDataset(torch.linspace(-1, 1, 256).reshape(64, 4), torch.arange(64) % 2)
# Seeded before anything random is drawn.
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
loader = DataLoader(data, batch_size=8, shuffle=True)
opt = torch.optim.SGD(model.parameters(), lr=0.1)

for epoch in range(3):
    for x, y in loader:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
