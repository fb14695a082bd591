"""Distillation: a frozen teacher in eval mode (fine); with --bug the student is put in eval mode too (CC009)."""
import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

parser = argparse.ArgumentParser()
parser.add_argument("--bug", action="store_true")
args = parser.parse_args()


def make_net(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(12, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Dropout(0.2), nn.Linear(width, 4))


torch.manual_seed(0)
teacher, student = make_net(64), make_net(16)
teacher.eval()
for p in teacher.parameters():
    p.requires_grad_(False)
if args.bug:
    student.eval()  # "it was pretrained": left in eval mode while it is fine-tuned
opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
x = torch.randn(256, 12)
for i in range(0, 256, 16):
    batch = x[i:i + 16]
    with torch.no_grad():
        target = F.softmax(teacher(batch) / 2.0, dim=1)
    loss = F.kl_div(F.log_softmax(student(batch) / 2.0, dim=1), target, reduction="batchmean")
    opt.zero_grad()
    loss.backward()
    opt.step()
