"""Layers in forward order, and activations that are all zero, on the first training steps (CC024).

On a sampled step (the first ``SAMPLED_STEPS``, at most ``FORWARDS_PER_STEP`` training forwards each) the
recorder puts forward hooks on the model's weight layers (Linear, Conv, RNN, Embedding) and ReLU modules for
the length of one forward, and removes them at the backward. Each hook reduces on the device; the results
cross to the host once per forward. Outside those forwards it costs one comparison per outermost forward.
Per-layer gradient norms are the probe's own (``grad_norms`` of sampled steps); this recorder gives them
their order.
"""

from __future__ import annotations

from typing import Any

from convcheck.runtime.recorders.base import Recorder

#: Steps (1-based) whose forwards are recorded.
SAMPLED_STEPS = 3
FORWARDS_PER_STEP = 2
#: Layers recorded per forward, in call order: enough for deep models, bounded for huge ones.
MAX_LAYERS = 400


def _kind(torch: Any, module: Any) -> tuple[str, Any] | None:
    """What a module is to this recorder ('weight', 'embedding', 'relu') and the weight it trains, or None."""
    nn = torch.nn
    if isinstance(module, (nn.ReLU, nn.ReLU6)):
        return "relu", None
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return "embedding", module.weight
    if isinstance(module, (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd)) or type(module).__name__ == "Conv1D":
        weight = getattr(module, "weight", None)
        return ("weight", weight) if isinstance(weight, nn.Parameter) else None
    if isinstance(module, (nn.RNNBase, nn.RNNCellBase)):
        weight = getattr(module, "weight_ih_l0", None)
        if weight is None:
            weight = getattr(module, "weight_ih", None)
        return ("weight", weight) if isinstance(weight, nn.Parameter) else None
    return None


class GradFlowRecorder(Recorder):
    """On the first training forwards, one ``gradflow`` event each: the weight and ReLU layers in call order,
    whether a weight layer's input or a ReLU's output was all zero for the whole batch, and the share of ReLU
    units that were zero for every sample."""

    name = "gradflow"
    events = ("gradflow",)

    def __init__(self, probe: Any) -> None:
        super().__init__(probe)
        self.torch: Any = None
        self.patches: Any = None
        #: Per model (by id): its layers of interest, found once.
        self.layers: dict[int, list[tuple[str, Any, str, Any]]] = {}
        self.handles: list[Any] = []
        self.calls: list[tuple[str, str, str, Any, Any, Any, int]] = []
        self.root: Any = None
        self.forwards: dict[int, int] = {}
        self.done = False

    def install(self, torch: Any, patches: Any) -> None:
        self.torch = torch
        self.patches = patches

    def after_fork(self) -> None:
        self.handles, self.calls, self.root = [], [], None

    def on_root_forward(self, module: Any, args: Any) -> None:
        if self.done:
            return
        if self.handles:
            self._flush()  # a forward with no backward after it (evaluation, a second model)
        step = self.probe.step_count
        if step >= SAMPLED_STEPS:
            self.done = True
            return
        if not module.training or not self.torch.is_grad_enabled() or type(module).__name__ == "OptimizedModule":
            return  # evaluation; or a torch.compile'd model, which hooks added and removed would recompile
        if self.forwards.get(step, 0) >= FORWARDS_PER_STEP:
            return
        self.forwards[step] = self.forwards.get(step, 0) + 1
        layers = self.layers.get(id(module))
        if layers is None:
            layers = self.layers[id(module)] = self._find_layers(module)
        self.root = module
        for name, sub, kind, weight in layers:
            # Guarded: a tensor type the reductions do not support is reported, never raised into forward().
            hook = self.patches.hook(f"gradflow hook on {name or type(sub).__name__}",
                                     self._hook(name, sub, kind, weight))
            self.handles.append(sub.register_forward_hook(hook))

    def on_backward(self, loss: Any) -> None:
        if self.handles:
            self._flush()

    def _find_layers(self, root: Any) -> list[tuple[str, Any, str, Any]]:
        found = []
        wrapped = type(root).__name__ in ("DistributedDataParallel", "DataParallel")
        for name, sub in root.named_modules():
            kind = _kind(self.torch, sub)
            if kind is not None:
                # Names as the user's model has them, as the probe names parameters.
                found.append((name[len("module."):] if wrapped and name.startswith("module.") else name, sub,
                              kind[0], kind[1]))
        return found

    def _hook(self, name: str, module: Any, kind: str, weight: Any) -> Any:
        recorder = self

        def hook(mod: Any, args: Any, output: Any) -> None:
            if len(recorder.calls) >= MAX_LAYERS:
                return
            torch = recorder.torch
            tensor = output if kind == "relu" else (args[0] if args else None)
            if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() or tensor.numel() == 0:
                if kind != "relu":
                    recorder.calls.append((name, type(mod).__name__, kind, weight, None, None, 0))
                return
            with torch.no_grad():
                nonzero = tensor.detach().ne(0)
                zero = ~nonzero.any()
                dead = None
                batch = int(tensor.shape[0]) if tensor.dim() >= 2 else 0
                if kind == "relu" and batch:
                    # A unit: a feature (last dim) of a [B, F] or [B, T, F] output, a channel of a conv's.
                    units = nonzero.transpose(0, 1) if tensor.dim() >= 4 else nonzero.movedim(-1, 0)
                    dead = 1.0 - units.reshape(units.shape[0], -1).any(1).float().mean()
            recorder.calls.append((name, type(mod).__name__, kind, weight, zero, dead, batch))

        return hook

    def _flush(self) -> None:
        """Remove this forward's hooks and emit what they saw, with one host transfer."""
        for handle in self.handles:
            handle.remove()
        self.handles = []
        calls, self.calls = self.calls, []
        root, self.root = self.root, None
        if not calls:
            return
        torch, probe = self.torch, self.probe
        values = [v for c in calls for v in (c[4], c[5]) if v is not None]
        host = iter(torch.stack([v.float().reshape(()) for v in values]).cpu().tolist() if values else [])
        merged: dict[str, dict[str, Any]] = {}
        for name, cls, kind, weight, zero, dead, batch in calls:
            entry = merged.get(name)
            if entry is None:
                entry = merged[name] = {"name": name, "cls": cls, "kind": kind, "calls": 0, "zero_calls": 0,
                                        "measured": 0}
                if weight is not None:
                    entry["param"] = probe.param_ids.get(id(weight))
                    entry["trainable"] = bool(weight.requires_grad)
            entry["calls"] += 1
            if zero is not None:
                entry["measured"] += 1
                entry["zero_calls"] += int(bool(next(host)))
            if dead is not None:
                share = float(next(host))
                entry["dead_units"] = min(entry.get("dead_units", 1.0), share)  # dead on every call
                entry["batch"] = max(entry.get("batch", 0), batch)
        frame = probe.forward_frame
        probe.emit("gradflow", step=probe.step_count + 1, root=probe.root_index.get(id(root)),
                   loc=[frame[0], frame[1]] if frame else None, layers=list(merged.values()))
