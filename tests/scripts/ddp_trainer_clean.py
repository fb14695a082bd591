"""A careful torchrun Trainer: batch_sampler over a DistributedSampler, a full validation set per rank,
rank-0 checkpoints of the unwrapped model, AdamW scaled by the square root of the world size."""
import argparse, os
import torch, torch.distributed as dist, torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset, BatchSampler

class Trainer:
    def __init__(self, args):
        self.args = args
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
        self.model = DDP(net)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=args.lr * (self.world_size ** 0.5))
        train = TensorDataset(torch.randn(200, 10), torch.randint(0, 3, (200,)))
        val = TensorDataset(torch.randn(40, 10), torch.randint(0, 3, (40,)))
        bs = BatchSampler(DistributedSampler(train, seed=args.seed), batch_size=args.batch_size, drop_last=True)
        self.train_loader = DataLoader(train, batch_sampler=bs)
        self.val_loader = DataLoader(val, batch_size=20)  # every rank evaluates the full set

    def fit(self):
        for epoch in range(self.args.epochs):
            self.train_loader.batch_sampler.sampler.set_epoch(epoch)
            self.model.train()
            for x, y in self.train_loader:
                self.opt.zero_grad()
                nn.functional.cross_entropy(self.model(x), y).backward()
                self.opt.step()
            self.evaluate()
            if self.rank == 0:
                torch.save({"model": self.model.module.state_dict(), "opt": self.opt.state_dict(), "epoch": epoch},
                           self.args.out)

    @torch.no_grad()
    def evaluate(self):
        self.model.eval()
        for x, y in self.val_loader:
            self.model(x)

def main():
    p = argparse.ArgumentParser()
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="model.pt")
    args = p.parse_args()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dist.init_process_group("gloo")
    torch.manual_seed(args.seed)
    Trainer(args).fit()
    dist.destroy_process_group()

if __name__ == "__main__":
    main()
