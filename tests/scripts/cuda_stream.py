"""Uses a CUDA stream, which has no CPU equivalent."""
import torch

model = torch.nn.Linear(4, 1).cuda()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
opt.zero_grad()
model(torch.randn(8, 4).cuda()).sum().backward()
opt.step()
side = torch.cuda.Stream()
with torch.cuda.stream(side):
    model(torch.randn(8, 4).cuda())
