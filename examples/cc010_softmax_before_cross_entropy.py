"""A classifier that ends in a softmax layer, trained with CrossEntropyLoss (which applies log_softmax itself)."""
# convcheck-args: --steps 6
import torch
import torch.nn as nn

torch.manual_seed(0)
x, y = torch.randn(256, 20), torch.randint(0, 5, (256,))
model = nn.Sequential(
    nn.Linear(20, 64),
    nn.ReLU(),
    nn.Linear(64, 5),
    nn.Softmax(dim=1),  # expect: CC010 error
)  # Bug: the softmax layer above turns the logits into probabilities before the loss.
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
criterion = nn.CrossEntropyLoss()

for epoch in range(10):
    for i in range(0, 256, 32):
        opt.zero_grad()
        loss = criterion(model(x[i:i + 32]), y[i:i + 32])
        loss.backward()
        opt.step()
