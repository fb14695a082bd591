"""nanoGPT-style checkpoints: the compiled model's state_dict is saved (`_orig_mod.` keys); on resume the
script strips that prefix itself before loading into the plain model."""

import os
import sys
import tempfile

import torch
import torch.nn as nn

torch.manual_seed(0)
path = os.path.join(sys.argv[1] if len(sys.argv) > 1 else tempfile.gettempdir(), "ckpt.pt")
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
compiled = torch.compile(model, backend="eager")
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
x = torch.randn(32, 8)
for step in range(4):
    loss = nn.functional.mse_loss(compiled(x), x.sum(1, keepdim=True))
    opt.zero_grad()
    loss.backward()
    opt.step()
torch.save({"model": compiled.state_dict(), "step": 4}, path)

# Resume, as the script would in a later run.
checkpoint = torch.load(path, weights_only=True)
state = checkpoint["model"]
for key in list(state):
    if key.startswith("_orig_mod."):
        state[key[len("_orig_mod."):]] = state.pop(key)
fresh = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
fresh.load_state_dict(state)
opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
for step in range(2):
    loss = nn.functional.mse_loss(fresh(x), x.sum(1, keepdim=True))
    opt.zero_grad()
    loss.backward()
    opt.step()
