"""A tiny language model on padded sequences: the token-mean cross-entropy (pads ignored) is,
with --bug, divided again by the number of non-pad tokens."""

import sys

import torch
import torch.nn as nn

PAD, VOCAB = 0, 11
torch.manual_seed(0)
model = nn.Sequential(nn.Embedding(VOCAB, 16), nn.Linear(16, VOCAB))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
for step in range(12):
    tokens = torch.randint(1, VOCAB, (4, 17))
    lengths = torch.tensor([17, 12, 9, 5])
    tokens[torch.arange(17)[None, :] >= lengths[:, None]] = PAD
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    logits = model(inputs)
    loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1), ignore_index=PAD)
    if "--bug" in sys.argv:
        n_tokens = (targets != PAD).sum()
        loss = loss / n_tokens
    opt.zero_grad()
    loss.backward()
    opt.step()
