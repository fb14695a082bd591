"""Features from a pretrained extractor run under no_grad, then a head trained through checkpoint_sequential
without use_reentrant (torch's default: the reentrant variant). --non-reentrant passes use_reentrant=False;
--input-grad makes the features require grad."""

import sys

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint_sequential

torch.manual_seed(0)
extractor = nn.Sequential(nn.Conv1d(2, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(4), nn.Flatten())
trunk = nn.Sequential(nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3))
opt = torch.optim.SGD(trunk.parameters(), lr=0.1)
signals, labels = torch.randn(16, 2, 20), torch.randint(0, 3, (16,))
kwargs = {"use_reentrant": False} if "--non-reentrant" in sys.argv else {}

for step in range(6):
    with torch.no_grad():
        feats = extractor(signals)
    if "--input-grad" in sys.argv:
        feats.requires_grad_(True)
    logits = checkpoint_sequential(trunk, 2, feats, **kwargs)
    loss = nn.functional.cross_entropy(logits, labels)
    opt.zero_grad()
    loss.backward()
    opt.step()
