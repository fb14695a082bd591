"""Asserts, inside a script written for CUDA, the copy semantics of device moves that a GPU has."""

import torch
import torch.nn as nn

torch.manual_seed(0)
host = torch.arange(4.0)
dev = host.to("cuda")
dev.add_(1)
assert host.tolist() == [0.0, 1.0, 2.0, 3.0], "moving to the GPU copies"
assert dev.to("cuda") is dev, "a tensor already on the GPU is not copied again"
assert host.cuda() is not host
back = dev.cpu()
back.mul_(10)
assert dev.tolist() == [1.0, 2.0, 3.0, 4.0], "moving off the GPU copies"
plain = torch.ones(2)
assert plain.cpu() is plain, "a CPU tensor stays itself"

model = nn.Linear(3, 1)
model.share_memory()
model.cuda()
assert not model.weight.is_shared(), "a module on the GPU is private to this process"
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for _ in range(3):
    opt.zero_grad()
    model(torch.randn(4, 3, device="cuda")).sum().backward()
    opt.step()
print("RESULT ok")
