"""Correct training under torch.compile: a compiled module, a compiled loss function, a compiled
whole training step (forward, backward, optimizer step, zero_grad) and a fullgraph forward."""

import torch
import torch.nn as nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 1))
compiled_model = torch.compile(model, backend="eager")
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
x, y = torch.randn(64, 8), torch.randn(64, 1)


@torch.compile(backend="eager")
def loss_fn(x, y):
    return nn.functional.mse_loss(model(x), y)


@torch.compile(backend="eager")
def train_step(x, y):
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad()
    return loss.detach()


@torch.compile(backend="eager", fullgraph=True)
def forward(x):
    return model(x)


for step in range(5):
    loss = nn.functional.mse_loss(compiled_model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad()
for step in range(5):
    loss = loss_fn(x, y)
    loss.backward()
    opt.step()
    opt.zero_grad()
for step in range(5):
    loss = train_step(x, y)
for step in range(5):
    loss = nn.functional.mse_loss(forward(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad()
print("RESULT", round(float(loss), 6))
