"""The realistic models of the benchmarks, written with torch.nn only, fed synthetic data.

Kept apart from the measuring code so that a plain training script can import them without
importing convcheck (``time_to_verdict.py --world --model gpt``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

Step = Callable[[], None]


@dataclass(frozen=True)
class Sizes:
    """The dimensions of the three models (full or --quick)."""

    gpt_layers: int
    gpt_dim: int
    gpt_heads: int
    gpt_block: int
    resnet_widths: tuple[int, int, int, int]
    lstm_hidden: int
    lstm_vocab: int


FULL = Sizes(gpt_layers=6, gpt_dim=384, gpt_heads=6, gpt_block=128, resnet_widths=(64, 128, 256, 512),
             lstm_hidden=650, lstm_vocab=10000)
QUICK = Sizes(gpt_layers=2, gpt_dim=32, gpt_heads=2, gpt_block=16, resnet_widths=(8, 16, 16, 32),
              lstm_hidden=32, lstm_vocab=200)


# -- a GPT-style character model ---------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention over earlier positions only."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).split(dim, dim=2)
        q, k, v = (t.view(batch, length, self.heads, dim // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=0.1 if self.training else 0.0)
        return self.drop(self.out(y.transpose(1, 2).reshape(batch, length, dim)))


class Block(nn.Module):
    """Pre-norm transformer block: attention then a 4x GELU feed-forward, each with a residual."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ff(self.norm2(x))


class CharGPT(nn.Module):
    """Token and position embeddings, a stack of blocks, a final norm and a tied output head."""

    def __init__(self, vocab: int, block: int, dim: int, heads: int, layers: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Embedding(block, dim)
        self.blocks = nn.Sequential(*(Block(dim, heads) for _ in range(layers)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.tokens.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        return self.head(self.norm(self.blocks(self.tokens(idx) + self.positions(pos))))


def gpt_run(sizes: Sizes, device: str = "cpu") -> tuple[nn.Module, Step]:
    """The char model and one training step: random windows of a synthetic character stream, AdamW."""
    vocab, block, batch = 65, sizes.gpt_block, 8
    stream = torch.randint(0, vocab, (200_000,)).to(device)
    model = CharGPT(vocab, block, sizes.gpt_dim, sizes.gpt_heads, sizes.gpt_layers).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1, betas=(0.9, 0.95))

    def step() -> None:
        starts = torch.randint(len(stream) - block - 1, (batch,))
        x = torch.stack([stream[s:s + block] for s in starts.tolist()])
        y = torch.stack([stream[s + 1:s + 1 + block] for s in starts.tolist()])
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, vocab), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return model, step


# -- a ResNet-18-shaped conv net -----------------------------------------------------------------


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm, and a 1x1 projection on the shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """The 32x32-image ResNet-18 layout: a 3x3 stem, four stages of two basic blocks, pooling, a classifier."""

    def __init__(self, widths: tuple[int, int, int, int], classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU())
        stages, cin = [], widths[0]
        for i, width in enumerate(widths):
            stages += [BasicBlock(cin, width, 1 if i == 0 else 2), BasicBlock(width, width, 1)]
            cin = width
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(widths[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1), 1))


def resnet_run(sizes: Sizes, device: str = "cpu") -> tuple[nn.Module, Step]:
    """The conv net and one training step: a shuffled DataLoader over synthetic images, SGD with momentum."""
    images, labels = torch.randn(1024, 3, 32, 32), torch.randint(0, 10, (1024,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=32,
                                         shuffle=True, drop_last=True)
    model = ResNet18(sizes.resnet_widths).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    batches = iter(loader)

    def step() -> None:
        nonlocal batches
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        x, y = x.to(device), y.to(device)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return model, step


# -- an LSTM language model ----------------------------------------------------------------------


class LSTMLanguageModel(nn.Module):
    """Embedding, a 2-layer LSTM with dropout, and a linear decoder over the vocabulary."""

    def __init__(self, vocab: int, hidden: int, layers: int = 2, dropout: float = 0.5) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.embed = nn.Embedding(vocab, hidden)
        self.rnn = nn.LSTM(hidden, hidden, layers, dropout=dropout)
        self.decoder = nn.Linear(hidden, vocab)

    def forward(self, tokens: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        out, state = self.rnn(self.drop(self.embed(tokens)), state)
        return self.decoder(self.drop(out)), state


def lstm_run(sizes: Sizes, device: str = "cpu") -> tuple[nn.Module, Step]:
    """The LSTM model and one step of truncated backpropagation through time, SGD with clip_grad_norm_."""
    vocab, hidden, bptt, batch = sizes.lstm_vocab, sizes.lstm_hidden, 35, 20
    stream = torch.randint(0, vocab, (batch * bptt * 64 + 1,)).to(device)
    columns = stream[: (len(stream) // batch) * batch].view(batch, -1).t().contiguous()
    model = LSTMLanguageModel(vocab, hidden).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=20.0)
    state = (torch.zeros(2, batch, hidden, device=device), torch.zeros(2, batch, hidden, device=device))
    position = 0

    def step() -> None:
        nonlocal state, position
        if position + bptt + 1 > len(columns):
            position = 0
        x, y = columns[position:position + bptt], columns[position + 1:position + 1 + bptt]
        position += bptt
        state = (state[0].detach(), state[1].detach())  # truncated backpropagation: cut the graph here
        model.zero_grad()
        logits, state = model(x, state)
        F.cross_entropy(logits.view(-1, vocab), y.reshape(-1)).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()

    return model, step


MODELS: dict[str, tuple[str, Callable[[Sizes, str], tuple[nn.Module, Step]]]] = {
    "gpt": ("GPT-style char model, 6 layers, d=384, block 128, batch 8, AdamW", gpt_run),
    "resnet": ("ResNet-18 shape, 32x32 images, batch 32, DataLoader, SGD momentum", resnet_run),
    "lstm": ("2-layer LSTM LM, 650 hidden, vocab 10000, bptt 35, batch 20, SGD + clipping", lstm_run),
}
