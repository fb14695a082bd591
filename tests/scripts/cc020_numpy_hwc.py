"""RGB images decoded to numpy HWC uint8 arrays, turned into CHW float tensors without scaling (CC020).

A hand-written Normalize is declared but applied to the validation images only. ``--scaled`` divides by 255 and
normalizes the training images too: the correct variant.
"""
import sys

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset


class Normalize:
    def __init__(self, mean: tuple, std: tuple) -> None:
        self.mean = torch.tensor(mean)[:, None, None]
        self.std = torch.tensor(std)[:, None, None]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Photos(Dataset):
    def __init__(self, n: int, transform=None, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.images = rng.integers(0, 256, size=(n, 24, 24, 3), dtype=np.uint8)
        self.labels = (self.images[..., 0].mean(axis=(1, 2)) > 127).astype(np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        x = torch.from_numpy(self.images[i]).permute(2, 0, 1).float()
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[i])


normalize = Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
scale = (lambda x: normalize(x / 255)) if "--scaled" in sys.argv else None
train = DataLoader(Photos(64, transform=scale), batch_size=16, shuffle=True,
                   generator=torch.Generator().manual_seed(0))
val = DataLoader(Photos(16, transform=lambda x: normalize(x / 255), seed=1), batch_size=16)
torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(3, 8, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.LazyLinear(2))
net(torch.zeros(1, 3, 24, 24))
opt = torch.optim.Adam(net.parameters(), lr=1e-3)
for epoch in range(3):
    for images, labels in train:
        out = net(images)
        loss = nn.functional.cross_entropy(out, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
