"""A classifier trained on data stored one class after another, shuffled on every device."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
use_cuda = torch.cuda.is_available()
# Four classes of 32 samples each, stored class by class.
labels = torch.arange(4).repeat_interleave(32)
features = torch.randn(128, 8) + labels[:, None].float()
train_kwargs = {"batch_size": 16, "shuffle": True}
if use_cuda:
    train_kwargs.update({"pin_memory": True})
# shuffle=True on every device: each batch draws from all four classes.
train_loader = DataLoader(TensorDataset(features, labels), **train_kwargs)
model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
opt = torch.optim.SGD(model.parameters(), lr=0.1)

for epoch in range(3):
    for x, y in train_loader:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
