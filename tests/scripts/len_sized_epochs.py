"""Sizes each epoch from len(loader), as HF Trainer and Lightning do, and pulls exactly that many batches."""
import torch
import torch.nn as nn

torch.manual_seed(0)
data = torch.utils.data.TensorDataset(torch.randn(128, 8), torch.randint(0, 2, (128,)))
loader = torch.utils.data.DataLoader(data, batch_size=16, shuffle=True)
model = nn.Linear(8, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
steps_per_epoch = len(loader)
print("steps per epoch", steps_per_epoch)
for epoch in range(3):
    batches = iter(loader)
    for _ in range(steps_per_epoch):
        x, y = next(batches)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
