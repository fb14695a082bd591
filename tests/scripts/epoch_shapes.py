"""Training loops of several shapes (argv[1]), for the automatic epoch length: which passes end early.

The training loader has 50 batches per epoch, the validation loader 20, iterated under no_grad.
"""
import contextlib
import sys

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset


class Stream(IterableDataset):
    """800 samples with no length."""

    def __iter__(self):  # noqa: ANN204
        g = torch.Generator().manual_seed(1)
        for _ in range(800):
            yield torch.randn(10, generator=g), int(torch.randint(0, 3, (1,), generator=g))


def batches(loader: DataLoader):  # noqa: ANN201
    """A generator between the loader and the training loop, as a progress bar is."""
    for batch in loader:
        yield batch


def train_step(x: torch.Tensor, y: torch.Tensor) -> None:
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


shape = sys.argv[1]
torch.manual_seed(0)
data = TensorDataset(torch.randn(800, 10), torch.randint(0, 3, (800,)))
train = DataLoader(Stream() if shape == "iterable" else data, batch_size=16)
val = DataLoader(TensorDataset(torch.randn(320, 10), torch.randint(0, 3, (320,))), batch_size=16)
model = nn.Linear(10, 3)
opt = torch.optim.SGD(model.parameters(), lr=0.05)
if shape == "single-pass":
    for x, y in train:
        train_step(x, y)
elif shape == "next":
    pulled = iter(train)
    for _ in range(60):
        train_step(*next(pulled))
elif shape == "accumulate":
    for epoch in range(4):
        for i, (x, y) in enumerate(train):
            (nn.functional.cross_entropy(model(x), y) / 2).backward()
            if i % 2 == 1:
                opt.step()
                opt.zero_grad()
else:
    for epoch in range(4):
        for x, y in batches(train) if shape == "wrapped" else train:
            train_step(x, y)
        # A validation loop with gradients on (no torch.no_grad()) is not known for one: it runs in full.
        with torch.no_grad() if shape != "val-with-grad" else contextlib.nullcontext():
            for x, y in val:
                model(x)
        print("epoch", epoch, "batches", len(train) if shape != "iterable" else "?")
