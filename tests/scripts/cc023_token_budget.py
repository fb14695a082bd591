"""A DDP trainer that steps once every --accum micro-batches, counting them in a while loop.

--no-sync: the micro-batches before the last run their forward under no_sync() (the backward after it).
"""
import argparse

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

parser = argparse.ArgumentParser()
parser.add_argument("--accum", type=int, default=3)
parser.add_argument("--no-sync", action="store_true")
parser.add_argument("--static-graph", action="store_true")
args = parser.parse_args()

dist.init_process_group("gloo")
torch.manual_seed(3)
encoder = nn.Sequential(nn.Embedding(50, 16), nn.Flatten(), nn.Linear(16 * 6, 32), nn.GELU(), nn.Linear(32, 50))
model = DistributedDataParallel(encoder, static_graph=args.static_graph, gradient_as_bucket_view=True)
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
generator = torch.Generator().manual_seed(100 + dist.get_rank())


def micro_step(tokens, labels, sync):
    if sync:
        logits = model(tokens)
    else:
        with model.no_sync():
            logits = model(tokens)
    loss = nn.functional.cross_entropy(logits, labels) / args.accum
    loss.backward()
    return loss.item()


micro = 0
while micro < 200:
    tokens = torch.randint(0, 50, (4, 6), generator=generator)
    labels = tokens[:, 0]
    last = (micro + 1) % args.accum == 0
    micro_step(tokens, labels, sync=last or not args.no_sync)
    micro += 1
    if last:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
dist.destroy_process_group()
