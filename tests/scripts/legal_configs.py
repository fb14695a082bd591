"""Correct training code that uses every API convcheck patches in an unusual but legal way.

It prints one RESULT line that depends on everything it computed: under convcheck it
must print the same line as under plain python.
"""

import io
import random
import warnings

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, IterableDataset, Sampler, TensorDataset

torch.manual_seed(0)
random.seed(0)
np.random.seed(0)
results = []

model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Dropout(0.1), nn.Linear(12, 1))
x, y = torch.randn(32, 6), torch.randn(32, 1)

# A disabled GradScaler is a pass-through (nanoGPT's bf16/fp32 path): no per-optimizer state.
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
off = torch.amp.GradScaler("cpu", enabled=False)
for _ in range(3):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        loss = nn.functional.mse_loss(model(x), y)
    off.scale(loss).backward()
    off.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    off.step(opt)
    off.update()
    opt.zero_grad(set_to_none=True)
results.append(float(off.get_scale()))

# An enabled scaler that never steps, and one that scales a list of losses.
idle = torch.amp.GradScaler("cpu")
results.append(idle.state_dict().get("scale", 0.0))
scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
with torch.autocast("cpu", dtype=torch.float16):
    out = model(x)
    losses = [nn.functional.mse_loss(out, y), out.abs().mean()]
scaled = scaler.scale(losses)
torch.autograd.backward(scaled)
scaler.step(opt)
scaler.update()
opt.zero_grad()

# Closures: SGD and LBFGS call them inside step(); the closure's loss comes back.
sgd = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def closure():
    sgd.zero_grad()
    value = nn.functional.mse_loss(model(x), y)
    value.backward()
    return value


results.append(float(sgd.step(closure)))
lbfgs = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=4)


def lbfgs_closure():
    lbfgs.zero_grad()
    value = nn.functional.mse_loss(model(x), y)
    value.backward()
    return value


results.append(float(lbfgs.step(lbfgs_closure)))

# An optimizer whose only group starts empty and gets its parameters later.
late = torch.optim.SGD([{"params": []}], lr=0.01)
late.step()
late.add_param_group({"params": list(model[3].parameters())})
nn.functional.mse_loss(model(x), y).backward()
late.step()
late.zero_grad()

# A custom sampler without set_epoch, a batch_sampler, a loader without len, batch_size=None.


class EveryOther(Sampler):
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return iter(range(0, self.n, 2))

    def __len__(self):
        return (self.n + 1) // 2


class Stream(IterableDataset):
    def __iter__(self):
        for i in range(8):
            yield torch.full((6,), float(i)), torch.tensor([float(i % 3)])


dataset = TensorDataset(x, y)
loaders = [
    DataLoader(dataset, batch_size=4, sampler=EveryOther(len(dataset))),
    DataLoader(dataset, batch_sampler=[[0, 1, 2], [3, 4], [5]]),
    DataLoader(Stream(), batch_size=3),
    DataLoader(Stream(), batch_size=None),
]
sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0)
for epoch in range(2):
    for loader in loaders:
        for xb, yb in loader:
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(xb), yb.reshape(model(xb).shape))
            loss.backward()
            opt.step()
    sched.step(float(loss))
results.append(sched.get_last_lr()[0])

# Modes by keyword, a state dict through a file object, a non-strict load with assign.
model.train(mode=False)
model.train(mode=True)
buffer = io.BytesIO()
torch.save(model.state_dict(), buffer)
buffer.seek(0)
state = torch.load(buffer, weights_only=True)
result = model.load_state_dict(state, strict=False, assign=False)
results.append(len(result.missing_keys))
with warnings.catch_warnings(record=True):
    warnings.warn("a warning the script catches itself")
warnings.showwarning("shown", UserWarning, __file__, 1, file=io.StringIO())

# Seeding spelled every way.
torch.manual_seed(seed=1)
random.seed()
np.random.seed(None)
random.seed(2)

# Lists of 0-d tensors built into tensors (the elements are no sequences), indexing by an integer vector.
picked = x[torch.tensor([0, 2, 4])]
returns = torch.tensor([picked[0, 0], picked[1, 0], float(loss)])
results.append(float(torch.as_tensor([returns[0], returns[2]]).sum() + torch.Tensor([returns[1]]).sum()))

# Non-scalar backward with a gradient, backward with inputs=, retain_graph.
out = model(x)
out.backward(torch.ones_like(out), retain_graph=True)
out.sum().backward(inputs=[model[0].weight])
model.zero_grad()

with torch.no_grad():
    digest = sum(float(p.double().sum()) for p in model.parameters())
print("RESULT", [round(v, 6) for v in results], round(digest, 6))
