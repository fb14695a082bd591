"""Run a script written for CUDA on the CPU: map its CUDA usage, keep AMP meaningful.

Without this, such a script crashes at its first CUDA call on a CPU-only machine — or,
worse, runs with ``torch.cuda.amp`` silently disabled, hiding the fp16 bugs convcheck
looks for. Every mapping is recorded (``device_map`` events, first use with the user's
line); what cannot be mapped (streams, events, graphs) stays importable and fails with a
message naming the call when it is used.
"""

from __future__ import annotations

import os
import sys
import weakref
from typing import Any

from convcheck.paths import display_loc
from convcheck.runtime.locate import (
    called_from_user_code, caller_file, event_location, is_library_file, is_torch_file,
)
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
        #: Availability questions already recorded.
        self.asked: set[str] = set()
        #: ids of the live storages the script believes are on the GPU.
        self.device_storages: set[int] = set()

    def record(self, what: str) -> None:
        """Record the first use of each mapping, with the user's line.

        A mapping a library made (Lightning's ``empty_cache``, Inductor's ``current_device``) is recorded
        as the library's: the user's line that led there did not ask for CUDA.
        """
        library = not called_from_user_code(2)
        if (what, library) in self.seen:
            return
        self.seen.add((what, library))
        extra = {"library": True} if library else {}
        self.probe.emit("device_map", what=what, loc=event_location(4), step=self.probe.step_count, **extra)

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
        self._patch_accelerator()
        self._patch_distributed()
        self._patch_amp()
        self._patch_load()
        self.probe.emit("device_map_active", pretend_cuda=self.pretend_cuda, torch_cuda=torch.cuda.is_available())

    def _patch_factories(self) -> None:
        shim = self

        def make(original: Any) -> Any:
            def factory(*args: Any, **kwargs: Any) -> Any:
                mapped = False
                if "device" in kwargs:
                    device = shim.cpu(kwargs["device"], "device='cuda' in a tensor factory")
                    mapped = device is not kwargs["device"]
                    kwargs["device"] = device
                if kwargs.get("pin_memory"):
                    kwargs["pin_memory"] = False
                result = original(*args, **kwargs)
                return shim.mark(result) if mapped else result

            return factory

        for name in _FACTORIES:
            self.patches.wrap(self.torch, name, make)

    # A move to a GPU copies; mapped onto the CPU it would be a no-op, so that two ranks sharing a
    # model built in the parent (mp.spawn puts it in shared memory) would train one set of weights,
    # and an offloaded `param.data.cpu()` would alias the storage it then frees. The mapping keeps
    # the GPU's copy semantics: storages the script believes are on the GPU are remembered, moves
    # onto "the GPU" copy, and moves back off it copy.
    def on_device(self, tensor: Any) -> bool:
        """Whether the script believes ``tensor`` lives on the GPU (its storage came from a mapped move)."""
        try:
            return id(tensor.untyped_storage()) in self.device_storages
        except Exception:
            return False

    def mark(self, tensor: Any) -> Any:
        """Remember ``tensor``'s storage as one on "the GPU", for as long as the storage lives.

        torch keeps one Python object per storage while it lives, so its id names it exactly (an
        address would not: a freed storage's memory is reused by CPU tensors).
        """
        try:
            storage = tensor.untyped_storage()
            key = id(storage)
            if key not in self.device_storages:
                self.device_storages.add(key)
                weakref.finalize(storage, self.device_storages.discard, key)
        except Exception:
            pass
        return tensor

    def onto_device(self, tensor: Any) -> Any:
        """``tensor`` moved onto "the GPU": a copy unless it is there already, as on a real device."""
        if self.on_device(tensor):
            return tensor
        return self.mark(tensor.clone())

    def move_module(self, module: Any, what: str) -> None:
        """A module moved onto "the GPU": shared-memory tensors get private copies; all are marked."""
        shared = 0
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.is_shared():
                # The GPU copy is private to this process: no other rank sees its updates.
                tensor.data = tensor.data.clone()
                shared += 1
            self.mark(tensor)
        if shared:
            self.record(f"{what}: {shared} shared-memory tensors copied (a GPU gives each process its own copy)")

    def _patch_moves(self) -> None:
        shim, torch = self, self.torch

        def map_to_args(args: tuple, kwargs: dict, what: str) -> tuple[tuple, dict, bool]:
            mapped = False
            if args and not isinstance(args[0], (torch.dtype, torch.Tensor)):
                device = shim.cpu(args[0], what)
                mapped = device is not args[0]
                args = (device, *args[1:])
            if "device" in kwargs:
                device = shim.cpu(kwargs["device"], what)
                mapped = mapped or device is not kwargs["device"]
                kwargs["device"] = device
            return args, kwargs, mapped

        def to_cpu(args: tuple, kwargs: dict) -> bool:
            device = args[0] if args and not isinstance(args[0], (torch.dtype, torch.Tensor)) else kwargs.get("device")
            return device is not None and str(device) == "cpu"

        def tensor_to(original: Any) -> Any:
            def to(self: Any, *args: Any, **kwargs: Any) -> Any:
                cpu = to_cpu(args, kwargs)
                args, kwargs, mapped = map_to_args(args, kwargs, "Tensor.to(cuda)")
                result = original(self, *args, **kwargs)
                if result is self and mapped:
                    return shim.onto_device(self)
                if result is self and cpu and shim.on_device(self):
                    return self.clone()
                return shim.mark(result) if mapped else result

            return to

        def tensor_cuda(original: Any) -> Any:
            def cuda(self: Any, *args: Any, **kwargs: Any) -> Any:
                shim.record("Tensor.cuda()")
                return shim.onto_device(self)

            return cuda

        def tensor_cpu(original: Any) -> Any:
            def cpu(self: Any, *args: Any, **kwargs: Any) -> Any:
                result = original(self, *args, **kwargs)
                return self.clone() if result is self and shim.on_device(self) else result

            return cpu

        def module_to(original: Any) -> Any:
            def to(self: Any, *args: Any, **kwargs: Any) -> Any:
                args, kwargs, mapped = map_to_args(args, kwargs, "Module.to(cuda)")
                result = original(self, *args, **kwargs)
                if mapped:
                    shim.move_module(self, "Module.to(cuda)")
                return result

            return to

        def module_cuda(original: Any) -> Any:
            def cuda(self: Any, *args: Any, **kwargs: Any) -> Any:
                shim.record("Module.cuda()")
                shim.move_module(self, "Module.cuda()")
                return self

            return cuda

        def stay(what: str) -> Any:
            def make(original: Any) -> Any:
                def method(self: Any, *args: Any, **kwargs: Any) -> Any:
                    shim.record(what)
                    return self

                return method

            return make

        self.patches.wrap(torch.Tensor, "to", tensor_to)
        self.patches.wrap(torch.Tensor, "cuda", tensor_cuda)
        self.patches.wrap(torch.Tensor, "cpu", tensor_cpu)
        self.patches.wrap(torch.nn.Module, "to", module_to)
        self.patches.wrap(torch.nn.Module, "cuda", module_cuda)
        self.patches.wrap(torch.Tensor, "pin_memory", stay("Tensor.pin_memory()"))

    def replace(self, owner: Any, name: str, what: str, result: Any) -> None:
        """``owner.name`` becomes a recorded stand-in: ``result(*args)`` if callable, else ``result`` itself."""
        shim = self

        def make(original: Any) -> Any:
            def function(*args: Any, **kwargs: Any) -> Any:
                shim.record(what)
                return result(*args, **kwargs) if callable(result) else result

            return function

        self.patches.wrap(owner, name, make)

    def _patch_cuda_module(self) -> None:
        shim, torch = self, self.torch
        cuda = torch.cuda
        from convcheck.runtime import env

        devices = int(os.environ.get(env.PRETEND_DEVICES) or 1)

        def replace(name: str, what: str, result: Any) -> None:
            self.replace(cuda, name, what, result)

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
            loc = event_location(4)
            where = f" at {display_loc(loc)}" if loc else ""
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
            self.patches.wrap(cuda, name, unmappable(name), deliberate=(UnmappableCudaCall,))

    def _patch_accelerator(self) -> None:
        """torch.accelerator, the device-agnostic API of current PyTorch examples, mapped like torch.cuda."""
        accelerator = getattr(self.torch, "accelerator", None)
        if accelerator is None:
            return
        torch = self.torch
        from convcheck.runtime import env

        devices = int(os.environ.get(env.PRETEND_DEVICES) or 1)

        def replace(name: str, what: str, result: Any) -> None:
            self.replace(accelerator, name, what, result)

        for name in ("set_device_index", "set_device_idx", "synchronize", "empty_cache", "reset_peak_memory_stats"):
            replace(name, f"torch.accelerator.{name}", None)
        for name in ("current_device_index", "current_device_idx"):
            replace(name, f"torch.accelerator.{name}", lambda *a, **k: int(os.environ.get("LOCAL_RANK", 0)))
        for stat in ("memory_allocated", "max_memory_allocated", "memory_reserved", "max_memory_reserved"):
            replace(stat, f"torch.accelerator.{stat}", lambda *a, **k: 0)
        if self.pretend_cuda:
            # Pretended to the script only: torch's own code (an optimizer's graph-capture check) that is
            # told an accelerator exists goes on to query its streams, which no mapping can provide.
            def pretend(name: str, what: str, answer: Any) -> None:
                def make(original: Any) -> Any:
                    def function(*args: Any, **kwargs: Any) -> Any:
                        if is_torch_file(caller_file()):
                            return original(*args, **kwargs)
                        self.record(what)
                        return answer()

                    return function

                self.patches.wrap(accelerator, name, make)

            pretend("is_available", "torch.accelerator.is_available (pretended)", lambda: True)
            pretend("current_accelerator", "torch.accelerator.current_accelerator -> cuda (on the CPU)",
                    lambda: torch.device("cuda"))
            pretend("device_count", "torch.accelerator.device_count (pretended)", lambda: devices)
        else:
            self._watch_availability(accelerator, "torch.accelerator.is_available")
            self._watch_availability(torch.cuda, "torch.cuda.is_available")

    def _watch_availability(self, owner: Any, what: str) -> None:
        """Record a script asking for a GPU and told there is none: --pretend-cuda may be what it needs."""
        shim = self

        def make(original: Any) -> Any:
            def is_available(*args: Any, **kwargs: Any) -> Any:
                answer = original(*args, **kwargs)
                if not answer and what not in shim.asked and not is_library_file(caller_file()):
                    shim.asked.add(what)
                    shim.probe.emit("accelerator_query", what=what, answer=False, loc=event_location(3))
                return answer

            return is_available

        self.patches.wrap(owner, "is_available", make)

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

        # DataParallel asks which device type is available; pretended CUDA would send it to real GPUs.
        # With no device type it wraps the module for one CPU device, which is what runs here.
        data_parallel = sys.modules.get("torch.nn.parallel.data_parallel")

        def no_device_type(original: Any) -> Any:
            def _get_available_device_type(*args: Any, **kwargs: Any) -> Any:
                if original(*args, **kwargs) == "cuda":
                    shim.record("DataParallel -> one CPU device")
                    return None
                return original(*args, **kwargs)

            return _get_available_device_type

        if data_parallel is not None:
            self.patches.wrap(data_parallel, "_get_available_device_type", no_device_type)

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
                mapped = device == "cuda"
                original(self, "cpu" if mapped else device, *args, **kwargs)
                if mapped and self.is_enabled():
                    # A disabled scaler does nothing on any device: no mapping to report.
                    shim.record("GradScaler('cuda') -> CPU")

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
