"""A tiny GPT-style language model whose causal mask was built from torch.ones instead of torch.tril."""
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
VOCAB, T, D = 64, 16, 32


class SelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(D, 3 * D)
        self.proj = nn.Linear(D, D)
        # Bug: all ones, so `bias == 0` below is False everywhere: every token also sees the future.
        self.register_buffer("bias", torch.ones(T, T).view(1, T, T))

    def forward(self, x):
        t = x.size(1)
        q, k, v = self.qkv(x).split(D, dim=2)
        att = (q @ k.transpose(-2, -1)) / D ** 0.5
        att = att.masked_fill(self.bias[:, :t, :t] == 0, float("-inf"))  # expect: CC019 warning
        return self.proj(F.softmax(att, dim=-1) @ v)


class TinyGPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, D)
        self.pos = nn.Embedding(T, D)
        self.attn = SelfAttention()
        self.head = nn.Linear(D, VOCAB)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.size(1)))
        x = x + self.attn(x)
        return self.head(x)


model = TinyGPT()
opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
data = torch.randint(0, VOCAB, (512,))
for step in range(20):
    starts = torch.randint(0, len(data) - T - 1, (8,))
    x = torch.stack([data[s:s + T] for s in starts])
    y = torch.stack([data[s + 1:s + T + 1] for s in starts])
    logits = model(x)
    loss = F.cross_entropy(logits.view(-1, VOCAB), y.view(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()
