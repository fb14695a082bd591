"""Activation checkpointing calls: the variant, and whether gradient can flow into the checkpointed part (CC022)."""

from __future__ import annotations

from typing import Any

from convcheck.runtime.fields import loc
from convcheck.runtime.recorders.base import Recorder

#: Calls recorded in full; later ones only run (a model checkpoints every layer on every step).
_MAX_CALLS = 16
_MAX_PARAMS = 200


class CheckpointRecorder(Recorder):
    """The first 16 ``torch.utils.checkpoint.checkpoint`` calls (``checkpoint_sequential``'s included): the
    variant (``use_reentrant`` as passed or defaulted), whether grad mode was on, whether any tensor input and
    the output require grad, and the parameters of the modules the checkpointed function called."""

    name = "checkpointing"
    events = ("activation_checkpoint",)

    def __init__(self, probe: Any) -> None:
        super().__init__(probe)
        self.count = 0
        #: Inside checkpoint_sequential, which passes its own resolved use_reentrant on: (passed, sequential loc).
        self.sequential: list[tuple[Any, Any]] = []

    def after_fork(self) -> None:
        self.sequential = []

    def install(self, torch: Any, patches: Any) -> None:
        import torch.utils.checkpoint as checkpoint_module

        # checkpoint() has no hook; libraries (transformers, timm) call it through the module attribute or a
        # name bound at import, both of which the patch reaches when installed as torch is imported.
        patches.wrap(checkpoint_module, "checkpoint", self._wrap_checkpoint)
        patches.wrap(checkpoint_module, "checkpoint_sequential", self._wrap_sequential)

    def _wrap_sequential(self, original: Any) -> Any:
        recorder = self

        def checkpoint_sequential(functions: Any, segments: Any, input: Any, use_reentrant: Any = None,
                                  **kwargs: Any) -> Any:
            recorder.sequential.append((use_reentrant, loc(3)))
            try:
                return original(functions, segments, input, use_reentrant=use_reentrant, **kwargs)
            finally:
                recorder.sequential.pop()

        return checkpoint_sequential

    def _wrap_checkpoint(self, original: Any) -> Any:
        recorder, probe = self, self.probe

        def checkpoint(function: Any, *args: Any, use_reentrant: Any = None, **kwargs: Any) -> Any:
            if recorder.count >= _MAX_CALLS:
                return original(function, *args, use_reentrant=use_reentrant, **kwargs)
            recorder.count += 1
            import torch

            passed, where, sequential = use_reentrant, loc(3), False
            if recorder.sequential:
                passed, where = recorder.sequential[-1]
                sequential = True
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            called: list[Any] = []
            handle = torch.nn.modules.module.register_module_forward_pre_hook(
                lambda module, _args: called.append(module))
            try:
                out = original(function, *args, use_reentrant=use_reentrant, **kwargs)
            finally:
                handle.remove()
            if isinstance(function, torch.nn.Module):
                called.append(function)
            params, seen = [], set()
            for module in called:
                for param in module.parameters(recurse=False):
                    if id(param) not in seen and param.requires_grad and len(params) < _MAX_PARAMS:
                        seen.add(id(param))
                        params.append(probe._param_index(param))
            first = next(iter(_tensors(out, torch)), None)
            probe.emit("activation_checkpoint", use_reentrant=passed if passed is None else bool(passed),
                       reentrant=True if passed is None else bool(passed), sequential=sequential,
                       grad_enabled=torch.is_grad_enabled(), n_tensors=len(tensors),
                       input_requires_grad=any(t.requires_grad for t in tensors),
                       output_requires_grad=None if first is None else bool(first.requires_grad),
                       function=_describe(function), params=params, loc=where, step=probe.step_count)
            return out

        return checkpoint


def _tensors(value: Any, torch: Any) -> list[Any]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v, torch)]
    return []


def _describe(function: Any) -> str:
    """``Block`` for a module, ``Block.forward`` for a bound method, the function's qualified name otherwise."""
    owner = getattr(function, "__self__", None)
    name = getattr(function, "__qualname__", None) or getattr(function, "__name__", None)
    if owner is not None and name:
        return f"{type(owner).__name__}.{name.rsplit('.', 1)[-1]}"
    return name or type(function).__name__
