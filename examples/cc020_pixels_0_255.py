"""A small CNN trained on 8-bit images converted to float but never scaled."""
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
# 64 grayscale 16x16 images stored as bytes, as image files decode to, and their classes.
pixels = torch.randint(0, 256, (64, 1, 16, 16), dtype=torch.uint8)
labels = (pixels.float().mean(dim=(1, 2, 3)) > 127.5).long()
model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                      nn.Linear(128, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.01)

for epoch in range(5):
    for i in range(0, 64, 16):
        x = pixels[i:i + 16].float()  # Bug: 0..255, not scaled to [0, 1]
        y = labels[i:i + 16]
        loss = F.cross_entropy(model(x), y)  # expect: CC020 warning
        opt.zero_grad()
        loss.backward()
        opt.step()
