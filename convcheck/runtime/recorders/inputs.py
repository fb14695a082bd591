"""What the first layer of a model receives: the input statistics of its first Conv/Linear call (CC020)."""

from __future__ import annotations

from typing import Any

from convcheck.runtime.fields import first_tensor
from convcheck.runtime.recorders.base import Recorder

#: Forwards whose first layer's input is summarized (constant inputs not counted).
_SAMPLES = 3
#: Outermost forwards after which the hook goes even if no layer was found (a model of other layers).
_GIVE_UP = 20
#: Elements the statistics are taken from at most (a strided sample of a larger input).
_MAX_ELEMENTS = 1 << 20


class InputRecorder(Recorder):
    """On the first outermost forwards, the first module with parameters of its own that the forward calls: its
    class, name, weight dtype and, when it is a Conv or Linear layer, its input's dtype, shape, min, max, mean,
    std and whether every value is a whole number; with the model's own input. A ``layer_input`` event each.

    The first layer, not the model's input, is what matters: a model may convert its uint8 input itself. A
    global forward pre-hook looks for it during sampled forwards only and is removed once it has its samples.
    """

    name = "inputs"
    events = ("layer_input",)

    def __init__(self, probe: Any) -> None:
        super().__init__(probe)
        self.armed = False
        self.samples = 0
        self.root: Any = None
        self.root_input: Any = None
        self.handle: Any = None

    def install(self, torch: Any, patches: Any) -> None:
        import torch.nn.modules.module as module_mod

        self._torch = torch
        self._layers = (torch.nn.modules.conv._ConvNd, torch.nn.Linear)
        self.handle = module_mod.register_module_forward_pre_hook(patches.hook("layer_input", self._pre_hook))
        self.probe.handles.append(self.handle)

    def on_root_forward(self, module: Any, args: Any) -> None:
        if self.handle is None:
            return
        if self.samples >= _SAMPLES or self.probe.root_calls >= _GIVE_UP:
            # torch copies its hooks before calling them: removing ours from within a hook is safe.
            self.handle.remove()
            self.handle = None
            self.armed, self.root, self.root_input = False, None, None
            return
        self.armed = True
        self.root = module
        self.root_input = first_tensor(args)

    def _pre_hook(self, module: Any, args: Any) -> None:
        if not self.armed or not module._parameters:
            return
        self.armed = False
        weight = next(iter(module._parameters.values()), None)
        fields: dict[str, Any] = {"layer": self.probe._module_name(module), "cls": type(module).__name__,
                                  "weight_dtype": str(weight.dtype) if weight is not None else None}
        tensor = first_tensor(args)
        if not isinstance(module, self._layers) or tensor is None or not tensor.is_floating_point():
            # An embedding, a norm layer or an integer input first: nothing for pixel scales to say.
            fields.update(dtype=str(tensor.dtype) if tensor is not None else "", shape=[], min=None, max=None,
                          mean=None, std=None, integer=None)
        else:
            fields.update(self._stats(tensor))
        # A constant input (a warm-up or shape-probing call with zeros) does not use up a sample.
        if fields["min"] is None or fields["min"] != fields["max"]:
            self.samples += 1
        root = self.root_input
        summary = None
        if root is not None and hasattr(root, "dtype"):
            summary = {"dtype": str(root.dtype), "shape": list(root.shape), "min": None, "max": None}
            if root is not tensor and root.numel() and (root.is_floating_point() or root.dtype == self._torch.uint8):
                sample = _sample(root)
                summary.update(min=float(sample.min()), max=float(sample.max()))
        probe = self.probe
        frame = probe.forward_frame
        probe.emit("layer_input", n=probe.root_calls, step=probe.step_count,
                   training=bool(getattr(self.root, "training", True)), root=summary,
                   loc=[frame[0], frame[1]] if frame else None, **fields)
        # The batch is not kept alive past its forward.
        self.root_input = None

    def _stats(self, tensor: Any) -> dict[str, Any]:
        torch = self._torch
        sample = _sample(tensor).double()
        empty = sample.numel() == 0
        return {
            "dtype": str(tensor.dtype), "shape": list(tensor.shape),
            "min": None if empty else float(sample.min()), "max": None if empty else float(sample.max()),
            "mean": None if empty else float(sample.mean()),
            "std": None if sample.numel() < 2 else float(sample.std()),
            "integer": None if empty else bool(torch.equal(sample, sample.round())),
        }


def _sample(tensor: Any) -> Any:
    """The tensor's values, detached and flat; a strided sample of at most ``_MAX_ELEMENTS`` of a large one."""
    flat = tensor.detach().reshape(-1)
    if flat.numel() > _MAX_ELEMENTS:
        flat = flat[:: flat.numel() // _MAX_ELEMENTS + 1]
    return flat
