"""dcgan-style seeding: with no seed given, one is drawn with random.randint, printed and used."""

import random

import torch
import torch.nn as nn

seed = random.randint(1, 10000)
print("Random Seed:", seed)
random.seed(seed)
torch.manual_seed(seed)
model = nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x = torch.randn(16, 4)
for step in range(5):
    opt.zero_grad()
    nn.functional.mse_loss(model(x), x.sum(1, keepdim=True)).backward()
    opt.step()
