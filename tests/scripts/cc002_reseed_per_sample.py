"""A dataset that reseeds Python's RNG for every sample (deterministic augmentation per index), while
the model's weights come from the unseeded torch RNG. With --clock, each sample's seed is the clock."""

import random
import sys
import time

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset


class Jittered(Dataset):
    def __len__(self):
        return 512

    def __getitem__(self, index):
        random.seed(time.perf_counter_ns() if "--clock" in sys.argv else index)
        x = torch.full((4,), random.random())
        return x, x.sum(0, keepdim=True)


model = nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for x, y in DataLoader(Jittered(), batch_size=64):
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
