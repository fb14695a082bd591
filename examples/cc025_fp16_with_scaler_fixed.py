"""Mixed precision with bf16, on a GPU when there is one (the CPU here): no GradScaler needed."""
# convcheck-args: --steps 6
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

device = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(0)
data = TensorDataset(torch.randn(256, 16), torch.randint(0, 4, (256,)))
loader = DataLoader(data, batch_size=32, shuffle=True)
model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4)).to(device)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

for epoch in range(3):
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        opt.zero_grad()
        # bf16 has fp32's range: no loss scaling, no skipped steps.
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
