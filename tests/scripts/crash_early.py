"""Crashes before its first training step."""
import torch

model = torch.nn.Linear(4, 2)
data = torch.randn(8, 5)
out = model(data)  # wrong input width: fails here
