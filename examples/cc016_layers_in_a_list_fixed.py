"""The same MLP with its hidden layers in nn.ModuleList: trained, moved and saved with the model."""
import torch
import torch.nn as nn

torch.manual_seed(0)


class MLP(nn.Module):
    def __init__(self, width=16, depth=3):
        super().__init__()
        self.inp = nn.Linear(4, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.out = nn.Linear(width, 1)

    def forward(self, x):
        x = torch.relu(self.inp(x))
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.out(x)


model = MLP()
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
x, y = torch.randn(128, 4), torch.randn(128, 1)
for step in range(20):
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
torch.save(model.state_dict(), "mlp.pt")
