"""A trainer written for a GPU with the old torch.cuda.amp spelling: fp16 autocast and a GradScaler.

--bf16: bfloat16 autocast and a disabled scaler.
"""
import sys

import torch
import torch.nn as nn

bf16 = "--bf16" in sys.argv
torch.manual_seed(5)
net = nn.Sequential(nn.Conv1d(3, 8, 5), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 2)).cuda()
optimizer = torch.optim.SGD(net.parameters(), lr=0.02, momentum=0.9)
scaler = torch.cuda.amp.GradScaler(enabled=not bf16)
signals = torch.randn(128, 3, 40)
classes = (signals.mean(dim=(1, 2)) > 0).long()

for epoch in range(4):
    for start in range(0, 128, 16):
        x = signals[start:start + 16].cuda(non_blocking=True)
        y = classes[start:start + 16].cuda(non_blocking=True)
        with torch.cuda.amp.autocast(dtype=torch.bfloat16 if bf16 else torch.float16):
            loss = nn.functional.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
