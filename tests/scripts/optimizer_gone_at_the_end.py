"""Trains inside main(), whose optimizer sits in a reference cycle: the collector frees it before the script ends."""
import gc

import torch


def main() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.itself = opt  # a cycle: only the garbage collector frees it
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 4)).sum().backward()
        opt.step()


main()
gc.collect()
print("RESULT ok")
