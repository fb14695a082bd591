"""The GPU an AMP run trained on and whether it supports bfloat16 natively (CC025)."""

from __future__ import annotations

from typing import Any

from convcheck.runtime.recorders.base import Recorder


class AmpDeviceRecorder(Recorder):
    """Once, at the first backward pass: whether CUDA is in use in this process and, if so, whether its
    device supports bfloat16 natively, with its name and compute capability.

    Asked only once the script has initialized CUDA itself: asking earlier would create a CUDA context
    on the default device in every rank (and before a fork) that the script never asked for.
    """

    name = "amp_device"
    events = ("amp_device",)

    def __init__(self, probe: Any) -> None:
        super().__init__(probe)
        self.torch: Any = None
        self.done = False

    def install(self, torch: Any, patches: Any) -> None:
        self.torch = torch

    def on_backward(self, loss: Any) -> None:
        if self.done:
            return
        self.done = True
        cuda = self.torch.cuda
        fields: dict[str, Any] = {"cuda": False, "bf16_supported": None, "capability": None, "device_name": None}
        try:
            if cuda.is_initialized():
                try:
                    native = cuda.is_bf16_supported(including_emulation=False)
                except TypeError:  # a torch without the argument answers for native support
                    native = cuda.is_bf16_supported()
                fields.update(cuda=True, bf16_supported=bool(native),
                              capability=list(cuda.get_device_capability()), device_name=str(cuda.get_device_name()))
        except Exception:
            pass
        self.probe.emit("amp_device", step=self.probe.step_count, **fields)
