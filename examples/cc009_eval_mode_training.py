"""Validation switches the model to eval mode after each epoch and training never switches it back."""
# convcheck-args: --steps 10
import torch
import torch.nn as nn

torch.manual_seed(0)
x_train, y_train = torch.randn(128, 10), torch.randint(0, 3, (128,))
x_val, y_val = torch.randn(64, 10), torch.randint(0, 3, (64,))
model = nn.Sequential(nn.Linear(10, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
criterion = nn.CrossEntropyLoss()

for epoch in range(5):
    # Bug: no model.train() here, so every epoch after the first trains in eval mode.
    for i in range(0, 128, 32):
        opt.zero_grad()
        criterion(model(x_train[i:i + 32]), y_train[i:i + 32]).backward()
        opt.step()
    model.eval()  # expect: CC009 error
    with torch.no_grad():
        accuracy = (model(x_val).argmax(1) == y_val).float().mean()
