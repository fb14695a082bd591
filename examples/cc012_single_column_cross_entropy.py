"""A binary classifier with one output column trained with CrossEntropyLoss: the loss is always exactly 0."""
# convcheck-args: --steps 6
import torch
import torch.nn as nn

torch.manual_seed(0)
x, y = torch.randn(256, 12), torch.randint(0, 2, (256, 1)).float()
model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
# Bug: cross-entropy over one output column is a softmax over one class (always 0 loss).
criterion = nn.CrossEntropyLoss()

for epoch in range(10):
    for i in range(0, 256, 32):
        opt.zero_grad()
        loss = criterion(model(x[i:i + 32]), y[i:i + 32])
        loss.backward()  # expect: CC012 error
        opt.step()
