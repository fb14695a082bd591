"""Fine-tuning with a frozen backbone kept in eval mode on purpose (its BatchNorm statistics frozen).
With --bug the backbone is trained too, yet still in eval mode."""

import sys

import torch
import torch.nn as nn

torch.manual_seed(0)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2))
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        return self.head(self.backbone(x))


model = Net()
if "--bug" in sys.argv:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
else:
    model.backbone.requires_grad_(False)
    opt = torch.optim.SGD(model.head.parameters(), lr=0.1)
x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
for epoch in range(3):
    model.train()
    model.backbone.eval()
    for i in range(0, 64, 16):
        loss = nn.functional.cross_entropy(model(x[i:i + 16]), y[i:i + 16])
        opt.zero_grad()
        loss.backward()
        opt.step()
