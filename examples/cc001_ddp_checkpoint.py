"""DDP training that checkpoints the wrapper's state_dict: every key starts with 'module.'."""
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
        # Bug: the DDP wrapper's state_dict names every tensor 'module.<name>'.
        torch.save({"model": model.state_dict(), "epoch": epoch}, "checkpoint.pt")  # expect: CC001 error
        evaluator = make_net()
        result = evaluator.load_state_dict(torch.load("checkpoint.pt")["model"], strict=False)  # expect: CC001 error
        print(f"epoch {epoch}: evaluator missing {len(result.missing_keys)} keys")
    dist.barrier()
dist.destroy_process_group()
