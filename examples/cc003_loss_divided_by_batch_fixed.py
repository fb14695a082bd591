"""A mean-reduced cross-entropy used as it is: the mean over the batch."""
# convcheck-args: --steps 4
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
data = TensorDataset(torch.randn(256, 16), torch.randint(0, 4, (256,)))
loader = DataLoader(data, batch_size=32, shuffle=True)
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
criterion = nn.CrossEntropyLoss()
opt = torch.optim.SGD(model.parameters(), lr=0.1)

for epoch in range(3):
    for x, y in loader:
        opt.zero_grad()
        # CrossEntropyLoss already averages over the batch.
        loss = criterion(model(x), y)
        loss.backward()
        opt.step()
