"""accelerate: a loop with gradient accumulation through accelerator.accumulate() that never clears the gradients."""
# convcheck-args: --steps 6
import torch
import torch.nn as nn
from accelerate import Accelerator
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
data = TensorDataset(torch.randn(512, 16), torch.randint(0, 3, (512,)))
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
loader = DataLoader(data, batch_size=32, shuffle=True)
model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

for epoch in range(3):
    for x, y in loader:
        with accelerator.accumulate(model):
            loss = nn.functional.cross_entropy(model(x), y)
            # Bug: no optimizer.zero_grad(), so every step adds the new gradient to all earlier ones.
            accelerator.backward(loss)  # expect: CC008 error
            optimizer.step()
