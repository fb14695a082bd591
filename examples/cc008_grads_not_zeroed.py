"""A training loop that never clears the gradients: each step adds the new gradient to all earlier ones."""
# convcheck-args: --steps 8
import torch
import torch.nn as nn

torch.manual_seed(0)
x, y = torch.randn(256, 10), torch.randint(0, 3, (256,))
model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
criterion = nn.CrossEntropyLoss()

for epoch in range(5):
    for i in range(0, 256, 32):
        loss = criterion(model(x[i:i + 32]), y[i:i + 32])
        # Bug: no opt.zero_grad() before backward, so gradients pile up across steps.
        loss.backward()  # expect: CC008 error
        opt.step()
