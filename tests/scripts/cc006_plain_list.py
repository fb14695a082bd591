"""Hidden layers kept in a plain Python list (--bug) instead of nn.ModuleList. --by-hand also adds their
parameters to the optimizer by hand. A frozen teacher kept out of the state dict on purpose is called too."""

import sys

import torch
import torch.nn as nn

torch.manual_seed(0)
BUG, BY_HAND = "--bug" in sys.argv, "--by-hand" in sys.argv


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        hidden = [nn.Linear(8, 8) for _ in range(2)]
        self.hidden = hidden if BUG or BY_HAND else nn.ModuleList(hidden)
        self.out = nn.Linear(8, 1)
        teacher = nn.Linear(8, 1).requires_grad_(False)
        self.__dict__["teacher"] = teacher  # deliberately unregistered: frozen, not saved

    def forward(self, x):
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.out(x) + 0.0 * self.teacher(x)


model = Net()
params = list(model.parameters())
if BY_HAND:
    params += [p for layer in model.hidden for p in layer.parameters()]
opt = torch.optim.SGD(params, lr=0.05)
x, y = torch.randn(64, 8), torch.randn(64, 1)
for step in range(10):
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
