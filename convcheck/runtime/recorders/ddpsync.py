"""Whether each backward pass under DistributedDataParallel all-reduced its gradients (CC023)."""

from __future__ import annotations

from typing import Any

from convcheck.runtime.recorders.base import Recorder

#: Backward passes recorded per process: a run of a few dozen steps fits many times over.
_MAX_EVENTS = 512


class DdpSyncRecorder(Recorder):
    """After each backward pass whose loss came from a DDP wrapper's forward: whether that forward prepared
    the gradient all-reduce (``require_backward_grad_sync`` with grad enabled, i.e. outside ``no_sync()``).

    DDP decides in its forward, not in backward (``no_sync()`` around the forward alone is enough), so the
    flag is read at the outermost forward of a DDP module: one attribute read, no patch.
    """

    name = "ddp_sync"
    events = ("ddp_sync",)

    def __init__(self, probe: Any) -> None:
        super().__init__(probe)
        self.ddp_cls: Any = None
        self.torch: Any = None
        #: The last DDP forward since the previous backward: (synced, static_graph), or None.
        self.pending: tuple[bool, bool] | None = None
        self.count = 0

    def install(self, torch: Any, patches: Any) -> None:
        import torch.distributed as dist

        if not dist.is_available():
            return
        from torch.nn.parallel import DistributedDataParallel

        self.ddp_cls, self.torch = DistributedDataParallel, torch

    def on_root_forward(self, module: Any, args: Any) -> None:
        if self.ddp_cls is None or not isinstance(module, self.ddp_cls):
            return
        synced = bool(self.torch.is_grad_enabled() and getattr(module, "require_backward_grad_sync", True))
        self.pending = (synced, bool(getattr(module, "static_graph", False)))

    def on_backward(self, loss: Any) -> None:
        if self.pending is None:
            return
        synced, static = self.pending
        self.pending = None
        if self.count >= _MAX_EVENTS:
            return
        self.count += 1
        probe = self.probe
        self.probe.emit("ddp_sync", n=probe.backward_count, step=probe.step_count, synced=synced,
                        static_graph=static)

    def after_fork(self) -> None:
        self.pending = None
