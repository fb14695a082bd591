"""Multi-task heads kept in a plain dict, their parameters handed to the optimizer by hand, and the model's
state_dict saved. --stack: a model whose every layer is in a plain list, trained by per-layer parameters
(it owns nothing: its state_dict is empty). --fixed: nn.ModuleDict."""

import sys

import torch
from torch import nn

torch.manual_seed(0)
TASKS = {"age": 1, "kind": 3}


class MultiTask(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(6, 16), nn.ReLU())
        heads = {task: nn.Linear(16, size) for task, size in TASKS.items()}
        self.heads = nn.ModuleDict(heads) if "--fixed" in sys.argv else heads

    def forward(self, x):
        h = self.trunk(x)
        return {task: head(h) for task, head in self.heads.items()}


class Stack(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = []
        for width in (6, 12):
            self.blocks.append(nn.Linear(width, 12))

    def forward(self, x):
        for block in self.blocks:
            x = torch.tanh(block(x))
        return {"age": x[:, :1], "kind": x[:, 1:4]}


def train(model, params):
    opt = torch.optim.Adam(params, lr=1e-2)
    x, age, kind = torch.randn(32, 6), torch.randn(32, 1), torch.randint(0, 3, (32,))
    for _ in range(8):
        out = model(x)
        loss = nn.functional.mse_loss(out["age"], age) + nn.functional.cross_entropy(out["kind"], kind)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save({"model": model.state_dict(), "step": 8}, "multitask.pt")


if "--stack" in sys.argv:
    net = Stack()
    train(net, [p for block in net.blocks for p in block.parameters()])
else:
    net = MultiTask()
    extra = [] if "--fixed" in sys.argv else [p for head in net.heads.values() for p in head.parameters()]
    train(net, list(net.parameters()) + extra)
