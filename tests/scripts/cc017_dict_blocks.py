"""A dataset of dict samples grouped in blocks of one class (not sorted), drawn in stored order (CC017).

``--shuffle`` passes shuffle=True to the training loader: the correct variant. The evaluation loader never shuffles.
"""
import sys

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset


class Blocks(Dataset):
    """Samples of class 2, then 0, then 3, then 1, 24 of each, as a folder-per-class listing would give them."""

    def __init__(self, n_per_class: int) -> None:
        self.labels = [c for c in (2, 0, 3, 1) for _ in range(n_per_class)]
        generator = torch.Generator().manual_seed(1)
        self.features = torch.randn(len(self.labels), 6, generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"features": self.features[i] + self.labels[i], "label": self.labels[i], "index": i}


def main() -> None:
    torch.manual_seed(0)
    train = DataLoader(Blocks(24), batch_size=8, shuffle="--shuffle" in sys.argv)
    held_out = DataLoader(Blocks(8), batch_size=8)
    model = nn.Linear(6, 4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for epoch in range(2):
        model.train()
        for batch in train:
            loss = nn.functional.cross_entropy(model(batch["features"]), batch["label"])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(b["features"]).argmax(1) == b["label"]).sum()) for b in held_out)
        print(f"epoch {epoch}: {correct}/32 held-out samples right")


if __name__ == "__main__":
    main()
