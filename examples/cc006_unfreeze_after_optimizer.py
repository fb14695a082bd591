"""Fine-tuning that unfreezes the backbone after the first epoch, but the optimizer was built without it."""
# convcheck-args: --steps 6 --max-batches-per-epoch 2
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


torch.manual_seed(0)
data = TensorDataset(torch.randn(128, 16), torch.randint(0, 4, (128,)))
loader = DataLoader(data, batch_size=16, shuffle=True)
model = Net()
for p in model.backbone.parameters():
    p.requires_grad = False  # train the head alone first
# Bug: the filter keeps only the head; the backbone unfrozen below is never in the optimizer.
opt = torch.optim.SGD(filter(lambda p: p.requires_grad, model.parameters()), lr=0.05)  # expect: CC006 error

for epoch in range(5):
    if epoch == 1:
        for p in model.backbone.parameters():
            p.requires_grad = True
    for x, y in loader:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
