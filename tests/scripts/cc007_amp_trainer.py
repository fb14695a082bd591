"""An AMP Trainer with argparse flags, gradient clipping, a scheduler and DataLoader workers."""
import argparse

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset


class AmpTrainer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.model = nn.Sequential(nn.Linear(8, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 2))
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.sched = torch.optim.lr_scheduler.StepLR(self.opt, step_size=10)
        self.dtype = torch.bfloat16 if args.bf16 else torch.float16
        self.scaler = None if args.no_scaler else torch.amp.GradScaler("cpu")
        data = TensorDataset(torch.randn(128, 8), torch.randint(0, 2, (128,)))
        self.loader = DataLoader(data, batch_size=16, shuffle=True, num_workers=2)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=self.dtype):  # mark: autocast
            loss = nn.functional.cross_entropy(self.model(x), y)
        if self.scaler is None:
            loss.backward()
            self.opt.step()
        elif self.args.optimizer_step:
            self.scaler.scale(loss).backward()
            self.opt.step()  # mark: optimizer-step
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
            nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.scaler.step(self.opt)
            self.scaler.update()
        self.sched.step()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--no-scaler", action="store_true")
    parser.add_argument("--optimizer-step", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    trainer = AmpTrainer(args)
    for epoch in range(3):
        for x, y in trainer.loader:
            trainer.step(x, y)
