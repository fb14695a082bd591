"""A Trainer class whose step clears the gradients between backward() and step() (CC008)."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class Trainer:
    def __init__(self, lr: float = 1e-3) -> None:
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        loss = F.mse_loss(self.model(x), y)
        loss.backward()
        self.optimizer.zero_grad()  # clears what backward just computed
        self.optimizer.step()
        return loss.item()

    def fit(self, epochs: int) -> None:
        x, y = torch.randn(128, 6), torch.randn(128, 1)
        for _ in range(epochs):
            for i in range(0, 128, 16):
                self.train_step(x[i:i + 16], y[i:i + 16])


if __name__ == "__main__":
    Trainer().fit(epochs=3)
