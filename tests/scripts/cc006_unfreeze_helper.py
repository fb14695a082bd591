"""Fine-tuning: a helper unfreezes the backbone at epoch 2, but the optimizer holds only what trained at first.

An epoch is 50 batches: without shortened epochs the default 20 steps never reach epoch 2.
"""
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(12, 24), nn.ReLU())
        self.head = nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def unfreeze(model: Net, opt: torch.optim.Optimizer) -> None:
    for p in model.backbone.parameters():
        p.requires_grad = True


torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(800, 12), torch.randint(0, 3, (800,))), batch_size=16, shuffle=True)
model = Net()
model.backbone.requires_grad_(False)
opt = torch.optim.SGD(filter(lambda p: p.requires_grad, model.parameters()), lr=0.05)
for epoch in range(4):
    if epoch == 2:
        unfreeze(model, opt)
    for x, y in loader:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
