"""A cosine schedule over 20 epochs (T_max=20) stepped after every batch: the lr reaches zero within the first epoch."""
# convcheck-args: --steps 12
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
data = TensorDataset(torch.randn(1024, 10), torch.randint(0, 2, (1024,)))
loader = DataLoader(data, batch_size=16, shuffle=True)
model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
epochs = 20
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)

for epoch in range(epochs):
    for x, y in loader:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        scheduler.step()  # expect: CC011 error
        # Bug: the line above steps a per-epoch schedule after every batch.
