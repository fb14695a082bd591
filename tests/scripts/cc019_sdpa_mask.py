"""A causal language model built on F.scaled_dot_product_attention whose boolean attn_mask was meant to be
lower-triangular but is all True. --fixed: torch.tril. --encoder: a bidirectional classifier with a
key-padding mask (no padding in these batches, so it is all True too, correctly)."""

import sys

import torch
from torch import nn
from torch.nn import functional as F

torch.manual_seed(0)
VOCAB, LENGTH, WIDTH = 40, 12, 24
ENCODER = "--encoder" in sys.argv


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(WIDTH, WIDTH) for _ in range(3))
        allowed = torch.ones(LENGTH, LENGTH, dtype=torch.bool)
        self.register_buffer("allowed", torch.tril(allowed) if "--fixed" in sys.argv else allowed)

    def forward(self, h, keep=None):
        n = h.shape[1]
        mask = keep[:, None, :] if ENCODER else self.allowed[:n, :n]
        return h + F.scaled_dot_product_attention(self.q(h), self.k(h), self.v(h), attn_mask=mask)


embed, layer = nn.Embedding(VOCAB, WIDTH), Layer()
out = nn.Linear(WIDTH, 2 if ENCODER else VOCAB)
params = [*embed.parameters(), *layer.parameters(), *out.parameters()]
opt = torch.optim.Adam(params, lr=1e-2)
tokens = torch.randint(0, VOCAB, (6, LENGTH + 1))
for step in range(6):
    if ENCODER:
        keep = torch.ones(6, LENGTH, dtype=torch.bool)  # key-padding mask: True = a real token
        logits = out(layer(embed(tokens[:, :-1]), keep).mean(1))
        loss = F.cross_entropy(logits, tokens[:, 0] % 2)
    else:
        logits = out(layer(embed(tokens[:, :-1])))
        loss = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:])
    opt.zero_grad()
    loss.backward()
    opt.step()
