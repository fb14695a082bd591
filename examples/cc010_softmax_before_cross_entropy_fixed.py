"""The same classifier ending in logits: CrossEntropyLoss applies log_softmax itself."""
# convcheck-args: --steps 6
import torch
import torch.nn as nn

torch.manual_seed(0)
x, y = torch.randn(256, 20), torch.randint(0, 5, (256,))
model = nn.Sequential(
    nn.Linear(20, 64),
    nn.ReLU(),
    nn.Linear(64, 5),
)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
criterion = nn.CrossEntropyLoss()

for epoch in range(10):
    for i in range(0, 256, 32):
        opt.zero_grad()
        loss = criterion(model(x[i:i + 32]), y[i:i + 32])
        loss.backward()
        opt.step()
