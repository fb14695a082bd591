"""Run a script written for CUDA on the CPU: map its CUDA usage, keep AMP meaningful.

Without this, such a script crashes at its first CUDA call on a CPU-only machine — or,
worse, runs with ``torch.cuda.amp`` silently disabled, hiding the fp16 bugs convcheck
looks for. Every mapping is recorded (``device_map`` events, first use with the user's
line); what cannot be mapped (streams, events, graphs) stays importable and fails with a
message naming the call when it is used.
"""

from __future__ import annotations

import os
from typing import Any

from convcheck.runtime.patches import Patches

# Factory functions that take ``device=``: a CUDA device there becomes the CPU.
_FACTORIES = (
    "tensor", "as_tensor", "zeros", "ones", "empty", "full", "rand", "randn", "randint", "randperm",
    "arange", "linspace", "logspace", "eye", "zeros_like", "ones_like", "empty_like", "full_like",
    "rand_like", "randn_like", "randint_like", "tril_indices", "triu_indices", "empty_strided",
)
_UNMAPPABLE = ("Stream", "Event", "stream", "current_stream", "default_stream", "ExternalStream", "graph", "CUDAGraph")


class UnmappableCudaCall(RuntimeError):
    """A CUDA feature with no CPU equivalent was used."""


class CudaShim:
    """Installs the mapping and records what it mapped."""

    def __init__(self, probe: Any, torch: Any, pretend_cuda: bool) -> None:
        self.probe = probe
        self.torch = torch
        self.pretend_cuda = pretend_cuda
        self.seen: set[tuple[str, bool]] = set()
        self.patches: Patches = probe.patches

    def record(self, what: str) -> None:
        """Record the first use of each mapping, with the user's line.

        A mapping a library made (Lightning's ``empty_cache``, Inductor's ``current_device``) is recorded
        as the library's: the user's line that led there did not ask for CUDA.
        """
        from convcheck.runtime.locate import called_from_user_code

        library = not called_from_user_code(2)
        if (what, library) in self.seen:
            return
        self.seen.add((what, library))
        from convcheck.runtime.probe import _loc

        extra = {"library": True} if library else {}
        self.probe.emit("device_map", what=what, loc=_loc(4), step=self.probe.step_count, **extra)

    def cpu(self, device: Any, what: str) -> Any:
        """The CPU in place of a CUDA device (a device, a 'cuda:N' string or an ordinal)."""
        torch = self.torch
        if isinstance(device, torch.device):
            if device.type == "cuda":
                self.record(what)
                return torch.device("cpu")
            return device
        if isinstance(device, str) and device.startswith("cuda"):
            self.record(what)
            return "cpu"
        if isinstance(device, int) and not isinstance(device, bool):
            self.record(what)
            return "cpu"
        return device

    def install(self) -> None:
        """Patch torch so that the script's CUDA usage lands on the CPU."""
        torch = self.torch
        self._patch_factories()
        self._patch_moves()
        self._patch_cuda_module()
        self._patch_distributed()
        self._patch_amp()
        self._patch_load()
        self.probe.emit("device_map_active", pretend_cuda=self.pretend_cuda, torch_cuda=torch.cuda.is_available())

    def _patch_factories(self) -> None:
        shim = self

        def make(original: Any) -> Any:
            def factory(*args: Any, **kwargs: Any) -> Any:
                if "device" in kwargs:
                    kwargs["device"] = shim.cpu(kwargs["device"], "device='cuda' in a tensor factory")
                if kwargs.get("pin_memory"):
                    kwargs["pin_memory"] = False
                return original(*args, **kwargs)

            return factory

        for name in _FACTORIES:
            self.patches.wrap(self.torch, name, make)

    def _patch_moves(self) -> None:
        shim, torch = self, self.torch

        def map_to_args(args: tuple, kwargs: dict, what: str) -> tuple[tuple, dict]:
            if args and not isinstance(args[0], (torch.dtype, torch.Tensor)):
                args = (shim.cpu(args[0], what), *args[1:])
            if "device" in kwargs:
                kwargs["device"] = shim.cpu(kwargs["device"], what)
            return args, kwargs

        def tensor_to(original: Any) -> Any:
            def to(self: Any, *args: Any, **kwargs: Any) -> Any:
                args, kwargs = map_to_args(args, kwargs, "Tensor.to(cuda)")
                return original(self, *args, **kwargs)

            return to

        def module_to(original: Any) -> Any:
            def to(self: Any, *args: Any, **kwargs: Any) -> Any:
                args, kwargs = map_to_args(args, kwargs, "Module.to(cuda)")
                return original(self, *args, **kwargs)

            return to

        def stay(what: str) -> Any:
            def make(original: Any) -> Any:
                def method(self: Any, *args: Any, **kwargs: Any) -> Any:
                    shim.record(what)
                    return self

                return method

            return make

        self.patches.wrap(torch.Tensor, "to", tensor_to)
        self.patches.wrap(torch.nn.Module, "to", module_to)
        self.patches.wrap(torch.Tensor, "cuda", stay("Tensor.cuda()"))
        self.patches.wrap(torch.nn.Module, "cuda", stay("Module.cuda()"))
        self.patches.wrap(torch.Tensor, "pin_memory", stay("Tensor.pin_memory()"))

    def _patch_cuda_module(self) -> None:
        shim, torch = self, self.torch
        cuda = torch.cuda
        from convcheck.runtime import env

        devices = int(os.environ.get(env.PRETEND_DEVICES) or 1)

        def replace(name: str, what: str, result: Any) -> None:
            def make(original: Any) -> Any:
                def function(*args: Any, **kwargs: Any) -> Any:
                    shim.record(what)
                    return result(*args, **kwargs) if callable(result) else result

                return function

            self.patches.wrap(cuda, name, make)

        replace("set_device", "torch.cuda.set_device", None)
        replace("synchronize", "torch.cuda.synchronize", None)
        replace("empty_cache", "torch.cuda.empty_cache", None)
        replace("current_device", "torch.cuda.current_device", lambda: int(os.environ.get("LOCAL_RANK", 0)))
        for stat in ("memory_allocated", "max_memory_allocated", "memory_reserved", "max_memory_reserved"):
            replace(stat, f"torch.cuda.{stat}", lambda *a, **k: 0)
        replace("reset_peak_memory_stats", "torch.cuda.reset_peak_memory_stats", None)
        if self.pretend_cuda:
            # Only on request: some scripts assert CUDA is there, but the truth is the default.
            replace("is_available", "torch.cuda.is_available (pretended)", lambda: True)
            replace("device_count", "torch.cuda.device_count (pretended)", lambda: devices)
            replace("get_device_name", "torch.cuda.get_device_name", lambda *a, **k: "CPU (mapped by convcheck)")
            replace("get_device_capability", "torch.cuda.get_device_capability", lambda *a, **k: (8, 0))
            replace("is_bf16_supported", "torch.cuda.is_bf16_supported", lambda *a, **k: True)

        def refuse(name: str) -> UnmappableCudaCall:
            from convcheck.runtime.probe import _loc

            loc = _loc(4)
            where = f" at {loc[0]}:{loc[1]}" if loc else ""
            shim.probe.emit("device_unmappable", what=f"torch.cuda.{name}", loc=loc, step=shim.probe.step_count)
            return UnmappableCudaCall(
                f"torch.cuda.{name}{where} has no CPU equivalent, so convcheck cannot run this script on "
                "the CPU past this point. Run on a machine with CUDA (--device cuda), or guard this call "
                "with torch.cuda.is_available()."
            )

        def unmappable(name: str) -> Any:
            def make(original: Any) -> Any:
                if isinstance(original, type):
                    # A class stays a class: libraries use these in annotations (``torch.cuda.CUDAGraph | None``),
                    # isinstance checks and subclasses at import time; only making one fails.
                    def __new__(cls: type, *args: Any, **kwargs: Any) -> Any:
                        raise refuse(name)

                    return type(name, (original,), {"__new__": __new__, "__module__": original.__module__,
                                                    "__qualname__": original.__qualname__, "__doc__": original.__doc__})

                def function(*args: Any, **kwargs: Any) -> Any:
                    raise refuse(name)

                return function

            return make

        for name in _UNMAPPABLE:
            self.patches.wrap(cuda, name, unmappable(name))

    def _patch_distributed(self) -> None:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        shim = self
        if not dist.is_available():
            return

        def init_wrap(original: Any) -> Any:
            def init_process_group(*args: Any, **kwargs: Any) -> Any:
                backend = kwargs.get("backend", args[0] if args else None)
                if isinstance(backend, str) and "nccl" in backend:
                    shim.record("backend nccl -> gloo")
                    if "backend" in kwargs:
                        kwargs["backend"] = "gloo"
                    else:
                        args = ("gloo", *args[1:])
                if "device_id" in kwargs:
                    kwargs["device_id"] = None
                return original(*args, **kwargs)

            return init_process_group

        self.patches.wrap(dist, "init_process_group", init_wrap)

        def ddp_init(original: Any) -> Any:
            def __init__(self: Any, module: Any, *args: Any, **kwargs: Any) -> None:
                if args and args[0] is not None:
                    shim.record("DDP device_ids -> CPU")
                    args = (None, *args[1:])
                if len(args) > 1 and args[1] is not None:
                    args = (args[0], None, *args[2:])
                for key in ("device_ids", "output_device"):
                    if kwargs.get(key) is not None:
                        shim.record("DDP device_ids -> CPU")
                        kwargs[key] = None
                original(self, module, *args, **kwargs)

            return __init__

        self.patches.wrap(DistributedDataParallel, "__init__", ddp_init)

        # SyncBatchNorm runs on GPUs only: on the CPU the model keeps its BatchNorm layers,
        # whose per-process statistics are what each rank sees anyway with one device each.
        def convert_wrap(original: Any) -> Any:
            def convert_sync_batchnorm(module: Any, *args: Any, **kwargs: Any) -> Any:
                shim.record("SyncBatchNorm -> BatchNorm (per process)")
                return module

            return convert_sync_batchnorm

        self.patches.wrap(shim.torch.nn.SyncBatchNorm, "convert_sync_batchnorm", convert_wrap)

    def _patch_amp(self) -> None:
        from torch.amp import autocast_mode, grad_scaler

        shim, torch = self, self.torch

        def autocast_init(original: Any) -> Any:
            def __init__(self: Any, device_type: str, dtype: Any = None, *args: Any, **kwargs: Any) -> None:
                if device_type == "cuda":
                    # CUDA autocast defaults to float16; CPU autocast to bfloat16: keep CUDA's numerics.
                    shim.record("autocast('cuda') -> CPU fp16")
                    device_type = "cpu"
                    dtype = dtype or torch.float16
                original(self, device_type, dtype, *args, **kwargs)

            return __init__

        self.patches.wrap(autocast_mode.autocast, "__init__", autocast_init)

        def scaler_init(original: Any) -> Any:
            def __init__(self: Any, device: str = "cuda", *args: Any, **kwargs: Any) -> None:
                if device == "cuda":
                    shim.record("GradScaler('cuda') -> CPU")
                    device = "cpu"
                original(self, device, *args, **kwargs)

            return __init__

        self.patches.wrap(grad_scaler.GradScaler, "__init__", scaler_init)

    def _patch_load(self) -> None:
        import torch.serialization

        shim = self

        def load_wrap(original: Any) -> Any:
            def load(f: Any, map_location: Any = None, *args: Any, **kwargs: Any) -> Any:
                if map_location is None:
                    map_location = "cpu"
                elif isinstance(map_location, dict):
                    map_location = {k: shim.cpu(v, "torch.load(map_location=cuda)") for k, v in map_location.items()}
                elif not callable(map_location):
                    map_location = shim.cpu(map_location, "torch.load(map_location=cuda)")
                return original(f, map_location, *args, **kwargs)

            return load

        for owner in (self.torch, torch.serialization):
            self.patches.wrap(owner, "load", load_wrap)


def install_cuda_shim(probe: Any, torch: Any, mode: str, pretend_cuda: bool) -> CudaShim | None:
    """Map CUDA to the CPU when ``mode`` is cpu, or auto on a machine without CUDA."""
    if mode == "cuda" or (mode == "auto" and torch.cuda.is_available()):
        return None
    shim = CudaShim(probe, torch, pretend_cuda)
    shim.install()
    return shim
