"""A DataLoader whose two workers are started with the spawn context (fresh interpreters)."""
import torch, torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset
if __name__ == "__main__":
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(TensorDataset(torch.randn(64, 4), torch.randn(64, 1)), batch_size=8, num_workers=2,
                        multiprocessing_context="spawn")
    for _ in range(10):
        for x, y in loader:
            opt.zero_grad(); nn.functional.mse_loss(model(x), y).backward(); opt.step()
