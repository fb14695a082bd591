"""DDP training that checkpoints the module inside the wrapper: plain keys that load anywhere."""
# convcheck-args: --nproc-per-node 2 --steps 4
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP


def make_net():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))


dist.init_process_group("gloo")
torch.manual_seed(0)
model = DDP(make_net())
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))

for epoch in range(10):
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    if dist.get_rank() == 0:
        # The module inside the wrapper has the plain names.
        torch.save({"model": model.module.state_dict(), "epoch": epoch}, "checkpoint.pt")
        evaluator = make_net()
        result = evaluator.load_state_dict(torch.load("checkpoint.pt")["model"], strict=False)
        print(f"epoch {epoch}: evaluator missing {len(result.missing_keys)} keys")
    dist.barrier()
dist.destroy_process_group()
