"""An unseeded model trained with slow steps: two runs differ from the first loss on."""
import time

import torch
import torch.nn as nn

model = nn.Linear(4, 1)  # weights from the unseeded torch RNG
opt = torch.optim.SGD(model.parameters(), lr=0.1)
data = torch.ones(8, 4)
for _ in range(100):
    loss = model(data).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    time.sleep(0.5)  # a step that takes a while, as real ones do
