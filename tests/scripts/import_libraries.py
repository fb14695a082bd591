"""Imports the ML libraries named on the command line (their heavy submodules too), then trains a step."""
import importlib
import sys

import torch

# What a training script reaches for: importing these runs the libraries' module-level annotations.
SUBMODULES = {
    "transformers": ["transformers.trainer", "transformers.generation.continuous_batching",
                     "transformers.models.bert.modeling_bert"],
    "accelerate": ["accelerate.accelerator", "accelerate.utils"],
    "lightning": ["lightning.pytorch", "lightning.fabric"],
    "pytorch_lightning": ["pytorch_lightning"],
    "torchvision": ["torchvision.models", "torchvision.transforms.v2"],
    "torchaudio": ["torchaudio.transforms"],
    "timm": ["timm.models"],
    "torchmetrics": ["torchmetrics.classification"],
    "peft": ["peft.tuners"],
    "diffusers": ["diffusers.models"],
}
for name in sys.argv[1:]:
    for module in [name, *SUBMODULES.get(name, [])]:
        importlib.import_module(module)
print("imported", " ".join(sys.argv[1:]))

model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
opt.zero_grad()
model(torch.randn(8, 4)).pow(2).mean().backward()
opt.step()
