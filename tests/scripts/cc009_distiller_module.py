"""Distillation inside one module whose own method runs teacher and student (a LightningModule's shape)."""
import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

parser = argparse.ArgumentParser()
parser.add_argument("--bug", action="store_true")
args = parser.parse_args()


def make_net(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(12, width), nn.ReLU(), nn.Dropout(0.2), nn.Linear(width, 4))


class Distiller(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.teacher, self.student = make_net(64), make_net(16)
        self.teacher.requires_grad_(False)

    def distill_loss(self, batch: torch.Tensor) -> torch.Tensor:
        self.teacher.eval()
        with torch.no_grad():
            target = F.softmax(self.teacher(batch) / 2.0, dim=1)
        return F.kl_div(F.log_softmax(self.student(batch) / 2.0, dim=1), target, reduction="batchmean")


torch.manual_seed(0)
distiller = Distiller()
if args.bug:
    distiller.student.eval()  # left in eval mode while it is trained
opt = torch.optim.AdamW(distiller.student.parameters(), lr=1e-3)
x = torch.randn(256, 12)
for i in range(0, 256, 16):
    opt.zero_grad()
    distiller.distill_loss(x[i:i + 16]).backward()
    opt.step()
