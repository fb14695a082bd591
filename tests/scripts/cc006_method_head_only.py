"""The model's own method (not forward) runs its parts, as Lightning's training_step does; the optimizer gets the head."""
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16))
        self.head = nn.Linear(16, 2)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(self.head(self.backbone(x)), y)


torch.manual_seed(0)
model = Net()
opt = torch.optim.SGD(model.head.parameters(), lr=0.1)
x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
for step in range(20):
    opt.zero_grad()
    model.training_loss(x, y).backward()
    opt.step()
