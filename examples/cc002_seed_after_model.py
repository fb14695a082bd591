"""The seed is set after the model is built: its initial weights differ in every run."""
# convcheck-args: --steps 4
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

data = TensorDataset(torch.linspace(-1, 1, 256).reshape(64, 4), torch.arange(64) % 2)
model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
# Bug: too late: the weights above were drawn from an unseeded RNG.
torch.manual_seed(0)  # expect: CC002 error
loader = DataLoader(data, batch_size=8, shuffle=True)
opt = torch.optim.SGD(model.parameters(), lr=0.1)

for epoch in range(3):
    for x, y in loader:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
