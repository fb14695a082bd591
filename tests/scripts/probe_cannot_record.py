"""A model whose named_parameters() refuses to run outside its own forward (as some wrappers do):
convcheck cannot name its parameters, but training must go on exactly as without convcheck."""

import torch
import torch.nn as nn


class Guarded(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 1)

    def named_parameters(self, *args, **kwargs):
        raise RuntimeError("parameters are only reachable through .parameters() here")

    def parameters(self, recurse=True):
        return self.body.parameters(recurse)

    def forward(self, x):
        return self.body(x)


torch.manual_seed(0)
model = Guarded()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x, y = torch.randn(16, 4), torch.randn(16, 1)
for _ in range(5):
    opt.zero_grad()
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
print("RESULT", round(float(loss), 6))
