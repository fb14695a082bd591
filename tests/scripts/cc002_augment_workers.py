"""A Dataset that augments with its own NumPy RandomState, read by DataLoader workers (argparse flags).

--seed-rng gives the RandomState a seed (runs repeat, but every worker still draws the same noise);
--worker-init reseeds it in each worker from torch's per-worker seed (correct); --seed-all seeds
torch as well.
"""
import argparse

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset


class NoisyDataset(Dataset):
    def __init__(self, seed: int | None) -> None:
        self.x = np.linspace(-1, 1, 8 * 64, dtype=np.float32).reshape(64, 8)
        self.y = (np.arange(64) % 2).astype(np.int64)
        self.rng = np.random.RandomState(seed)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        noise = self.rng.normal(0, 0.1, size=8).astype(np.float32)
        return torch.from_numpy(self.x[i] + noise), int(self.y[i])


def reseed(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    info.dataset.rng.seed(torch.initial_seed() % 2**32)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed-rng", action="store_true")
    parser.add_argument("--worker-init", action="store_true")
    parser.add_argument("--seed-all", action="store_true")
    args = parser.parse_args()
    if args.seed_all:
        torch.manual_seed(0)
    dataset = NoisyDataset(seed=0 if args.seed_rng else None)
    loader = DataLoader(dataset, batch_size=8, shuffle=True, num_workers=2,
                        worker_init_fn=reseed if args.worker_init else None)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()


if __name__ == "__main__":
    main()
