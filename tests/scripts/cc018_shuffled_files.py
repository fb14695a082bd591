"""torchrun-style DDP over a list of sample files that each rank shuffles itself before cutting off a
validation part (CC018). ``--sorted`` keeps the listing's order: the correct variant."""
import random
import sys
import zlib

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class Recordings(Dataset):
    """One sample per file name; the features are derived from the name (no file is opened)."""

    def __init__(self, files: list[str]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        seed = zlib.crc32(self.files[i].encode())
        x = torch.randn(4, generator=torch.Generator().manual_seed(seed))
        return x, x.sum().reshape(1)


def main() -> None:
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    files = [f"recordings/take_{i:03d}.wav" for i in range(120)]
    if "--sorted" not in sys.argv:
        random.shuffle(files)
    train = Recordings(files[:96])
    val = Recordings(files[96:])
    model = DistributedDataParallel(nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05 * dist.get_world_size())
    sampler = DistributedSampler(train)
    loader = DataLoader(train, batch_size=8, sampler=sampler)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        for x, y in loader:
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    with torch.no_grad():
        error = sum(float(nn.functional.mse_loss(model(x), y)) for x, y in DataLoader(val, batch_size=8))
    print(f"validation error {error:.3f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
