"""A torch.compile'd model trained and saved through the compiled wrapper (keys start with `_orig_mod.`)."""
import argparse

import torch
import torch.nn as nn

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=40)
parser.add_argument("--backend", default="inductor")
args = parser.parse_args()

torch.manual_seed(0)
model = torch.compile(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2)), backend=args.backend)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x, y = torch.randn(256, 16), torch.randint(0, 2, (256,))
for step in range(args.steps):
    i = step % 8 * 32
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x[i:i + 32]), y[i:i + 32])
    loss.backward()
    opt.step()
    if step % 5 == 4:
        torch.save(model.state_dict(), "compiled.pt")  # _orig_mod. keys: CC001
