"""The probe: installed in every process of a run, it records what training did.

Probes never judge; they append events to the process's trace. Global torch hooks
are used wherever torch offers one; the few functions torch offers no hook for are
patched in ``_install_patches`` (each patch says why), all through one reversible
registry.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import multiprocessing.util
import os
import sys
import traceback
import weakref
from typing import Any

from convcheck.runtime import env, fsguard, stepstats
from convcheck.runtime.fields import loc as _loc
from convcheck.runtime.fields import first_tensor as _first_tensor
from convcheck.runtime.fields import num as _num
from convcheck.runtime.locate import called_by_library, caller_file, caller_frame, is_library_file, user_frame
from convcheck.runtime.patches import Patches
from convcheck.runtime.trace import Event, TraceWriter, process_tag

_MAX_RECORDED_KEYS = 2000
_MAX_RECORDED_INDICES = 4096
_MAX_NONFINITE_EVENTS = 20


#: pid of the process that runs the user's script (set by the worker); others are children.
ENTRY_PID: int | None = None


class SelfSpawnUnderNproc(RuntimeError):
    """A script that calls mp.spawn itself was started N times by --nproc-per-node."""


class StopRun(BaseException):
    """Raised at the step budget; a BaseException so ``except Exception`` cannot swallow it."""


def _owning_module(module: Any, frames: int = 12) -> Any:
    """The user's model whose own method called ``module`` outside any forward (Lightning's ``training_step``
    calling ``self.backbone``), or None: the model, not each of its parts, is what trains."""
    import torch.nn as nn

    frame = sys._getframe(2)
    for _ in range(frames):
        if frame is None:
            return None
        if not is_library_file(frame.f_code.co_filename):
            owner = frame.f_locals.get("self")
            if isinstance(owner, nn.Module) and owner is not module and any(m is module for m in owner.modules()):
                return owner
        frame = frame.f_back
    return None


class Probe:
    """Per-process recorder. One instance per process; forked children reset it."""

    def __init__(self, trace_dir: str, scratch_dir: str | None, steps: int, max_batches: int | None,
                 epoch_steps: int | None = None) -> None:
        self.writer = TraceWriter(trace_dir)
        self.scratch_dir = scratch_dir
        self.steps_budget = steps
        self.max_batches = max_batches
        #: Optimizer steps after which a training loop's epoch ends when no max_batches was given (epochcap.py).
        #: Not in CC012's overfit run: it repeats one batch, and its epochs would only cut its steps short.
        overfit = os.environ.get(env.REPEAT_FIRST_BATCH) == "1"
        self.epoch_steps = epoch_steps if max_batches is None and not overfit else None
        #: Batches after which a validation pass ends while training passes are shortened (0: full passes).
        self._evaluation_batches = 0
        self.patches = Patches(on_error=self._probe_error)
        self.handles: list[Any] = []
        self.stopping = False
        self.scaled_losses: dict[int, float] = {}
        self.finished = False
        # Per-optimizer step attempts (performed + skipped by a GradScaler).
        self.attempts: dict[int, int] = {}
        self.step_count = 0
        self.step_closure = False
        self.backward_count = 0
        self.backwards_since_step = 0
        self.optimizer_ids: dict[int, int] = {}
        self.param_ids: dict[int, int] = {}
        self.param_names: dict[int, str] = {}
        self.known_roots: set[int] = set()
        #: ids of DDP wrappers and the modules they wrap; set while one of them is being moved or cast.
        self.ddp_modules: set[int] = set()
        self.moving_ddp = False
        #: id of each model root -> the index of its "model" event.
        self.root_index: dict[int, int] = {}
        self.active_root: Any = None
        self.root_calls = 0
        self.checked_modules: set[int] = set()
        self.mode_modules: list[tuple[Any, list[tuple[str, Any]]]] = []
        self.depth = 0
        #: (file, line, frames below) of the user's line that made the last outermost forward call.
        self.forward_frame: tuple[str, int, int] | None = None
        self.fp16_autocast_depth = 0
        self.armed_nonfinite = False
        self.nonfinite_events = 0
        self.nonfinite_seen_this_step = False
        self.pre_step: stepstats.Snapshot | None = None
        self.last_params: list[Any] = []
        self.loader_ids: dict[int, int] = {}
        self.sampler_ids: dict[int, int] = {}
        self._open_epochs: dict[int, Event] = {}
        # Model parameters (by index) and outer modules, held weakly: what requires_grad, what
        # no optimizer holds, and what each run ends with (CC002, CC006).
        self.param_refs: dict[int, Any] = {}
        self.root_refs: list[Any] = []
        self.optimizer_refs: list[Any] = []
        self.final_recorded = False
        #: The optimizer stepped last and its parameters: whose gradients the next backward adds to.
        self.stepped: tuple[int, list[Any]] | None = None
        #: CC012's overfit run: each DataLoader's first batch, yielded again in place of every later one.
        self.repeat_first_batch = os.environ.get(env.REPEAT_FIRST_BATCH) == "1"
        self.first_batches: dict[int, Any] = {}
        #: The recorders this run asked for (``CONVCHECK_RECORDERS``; absent: every available one), by name;
        #: those that follow each outermost forward and each backward.
        self.recorders: dict[str, Any] = {}
        self.forward_recorders: list[Any] = []
        self.backward_recorders: list[Any] = []

    # -- recording -------------------------------------------------------------

    def emit(self, ev: str, **fields: Any) -> None:
        """Record one event."""
        fields["ev"] = ev
        self.writer.emit(fields)

    def _probe_error(self, where: str, exc: BaseException) -> None:
        """convcheck's own recording failed at ``where``; the user's call ran as if unpatched."""
        self.emit("probe_error", where=where,
                  traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:])

    def header(self, role: str) -> None:
        """The first event of every process: who it is."""
        import torch

        self.emit(
            "process",
            pid=os.getpid(),
            ppid=os.getppid(),
            role=role,
            argv=list(sys.argv),
            rank=_env_int("RANK"),
            local_rank=_env_int("LOCAL_RANK"),
            world_size=_env_int("WORLD_SIZE"),
            torch=torch.__version__,
            python=sys.version.split()[0],
            steps_budget=self.steps_budget,
        )

    def scratch_path(self, f: Any) -> str:
        """Where a write to the user's path ``f`` goes instead; the same in every process."""
        original = os.path.abspath(os.fspath(f))
        tag = hashlib.blake2b(original.encode(), digest_size=6).hexdigest()
        return os.path.join(self.scratch_dir or "", f"{tag}-{os.path.basename(original)}")

    # -- stopping --------------------------------------------------------------

    def is_entry(self) -> bool:
        return ENTRY_PID == os.getpid()

    def finish(self, status: str) -> None:
        """Write the last event and flush; idempotent."""
        if self.finished:
            return
        self.record_final()
        self.finished = True
        for record in list(self._open_epochs.values()):
            self._close_epoch(record, complete=False)
        self.emit("end", status=status, steps=self.step_count, backwards=self.backward_count)
        self.writer.close()

    def hard_exit(self, code: int = 0) -> None:
        """Flush, stop this process's children, and leave without running teardown.

        Interpreter teardown after gloo DDP aborts in about a fifth of runs, and
        orphaned DataLoader workers hold pipes open: os._exit after cleanup avoids both.
        """
        self.finish("stopped-at-budget" if self.stopping else "exited")
        if self.is_entry():
            write_exit_record({"status": "stopped-at-budget" if self.stopping else "completed", "code": code,
                               "steps": self.step_count})
        for child in multiprocessing.active_children():
            try:
                child.terminate()
            except Exception:
                pass
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def _check_budget(self, optimizer: Any) -> None:
        key = id(optimizer)
        if self.stopping:
            # The StopRun we raised was swallowed (bare except): leave now.
            self.hard_exit(0)
        if self.attempts.get(key, 0) >= self.steps_budget:
            self.stopping = True
            if self.last_params:
                self.emit_histograms(self.last_params, "last")
            self.record_final()
            self.emit("stop", reason="budget", steps=self.step_count)
            if self.is_entry():
                raise StopRun()
            self.hard_exit(0)

    # -- names -----------------------------------------------------------------

    def _register_root(self, module: Any) -> None:
        if id(module) in self.known_roots:
            return
        self.known_roots.add(id(module))
        params = []
        wrapper = type(module).__name__ in ("DistributedDataParallel", "DataParallel", "OptimizedModule")
        for name, param in module.named_parameters():
            if wrapper:
                for prefix in ("module.", "_orig_mod."):
                    if name.startswith(prefix):
                        name = name[len(prefix):]
            index = self._param_index(param)
            self.param_refs.setdefault(index, weakref.ref(param))
            if index not in self.param_names:
                self.param_names[index] = name
                params.append({"id": index, "name": name, "shape": _shape_of(param),
                               "requires_grad": bool(param.requires_grad), "dtype": str(param.dtype)})
        if params:
            # Dropout and batch-norm behave differently in eval mode: remember them to watch their mode.
            import torch.nn as nn

            sensitive = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._NormBase)
            moded = [(name, sub) for name, sub in module.named_modules() if isinstance(sub, sensitive)]
            self.mode_modules.append((module, moded))
            # obj: the module's id, to match train()/eval() calls (train_mode events) to this model.
            # Shared memory (share_memory(), or a model handed to mp.Process): Hogwild-style training.
            shared = any(_is_shared(p) for p in module.parameters())
            self.emit("model", cls=type(module).__name__, obj=id(module), params=params, wrapper=wrapper,
                      mode_modules=[{"name": name, "cls": type(sub).__name__} for name, sub in moded],
                      **({"shared_memory": True} if shared else {}))
            self.root_index[id(module)] = len(self.root_refs)
            self.root_refs.append(weakref.ref(module))
            self.emit_module_flags(module, "model")

    def _param_index(self, param: Any) -> int:
        index = self.param_ids.get(id(param))
        if index is None:
            index = self.param_ids[id(param)] = len(self.param_ids)
        return index

    def _optimizer_index(self, optimizer: Any) -> int:
        index = self.optimizer_ids.get(id(optimizer))
        if index is None:
            index = self.optimizer_ids[id(optimizer)] = len(self.optimizer_ids)
            self.optimizer_refs.append(weakref.ref(optimizer))
            groups = []
            for group in optimizer.param_groups:
                hparams = {k: v for k, v in group.items() if k != "params" and isinstance(v, (int, float, bool))}
                groups.append({"params": [self._param_index(p) for p in group["params"]], **hparams})
            self.emit("optimizer", opt=index, cls=type(optimizer).__name__, groups=groups,
                      loc=getattr(optimizer, "_convcheck_loc", None))
        return index

    # -- hooks -----------------------------------------------------------------

    def forward_pre_hook(self, module: Any, args: Any) -> None:
        if self.depth == 0:
            if id(module) not in self.known_roots:
                owner = _owning_module(module)
                if owner is not None:
                    self.known_roots.add(id(module))
                    module = owner
            self._register_root(module)
            self.forward_frame = user_frame(2)
            for recorder in self.forward_recorders:
                recorder.on_root_forward(module, args)
            self.active_root = module
            self.root_calls += 1
        elif self.root_calls <= 3 and id(module) not in self.checked_modules:
            # The first forwards only: a layer called inside the model that the model does not own.
            self.checked_modules.add(id(module))
            self._check_registered(module)
        self.depth += 1

    def _check_registered(self, module: Any) -> None:
        """Record a module called in the model's forward whose parameters the model does not own.

        Layers kept in a plain list/dict/tuple attribute are called like any other but are not
        submodules: model.parameters(), the optimizer, state_dict(), .to() and DDP all miss them.
        """
        params = list(module.named_parameters(recurse=False))
        if not params or all(self.param_ids.get(id(p)) in self.param_names for _, p in params):
            return
        root = self.active_root
        if root is None:
            return
        # None: the model owns no parameter at all (every layer in a plain list), so it has no "model" event.
        root_index = self.root_index.get(id(root))
        container, where = _plain_container(root, module)
        if root_index is None and container is None:
            return  # a model handed to a parameter-free module (a loss that calls it) is no layer of that module
        recorded = []
        for pname, param in params:
            index = self._param_index(param)
            if index in self.param_names:
                continue
            name = f"{container}.{pname}" if container else f"<{type(module).__name__}>.{pname}"
            self.param_names[index] = name
            self.param_refs.setdefault(index, weakref.ref(param))
            recorded.append({"id": index, "name": name, "shape": _shape_of(param),
                             "requires_grad": bool(param.requires_grad), "dtype": str(param.dtype)})
        if recorded:
            self.emit("unregistered_module", cls=type(module).__name__, root=root_index,
                      root_cls=type(root).__name__, container=container, holder=where, params=recorded,
                      loc=_loc(4))

    def forward_hook(self, module: Any, args: Any, output: Any) -> None:
        self.depth = max(0, self.depth - 1)
        if (self.fp16_autocast_depth or self.armed_nonfinite) and self.nonfinite_events < _MAX_NONFINITE_EVENTS:
            tensor = _first_tensor(output)
            if tensor is not None and tensor.is_floating_point() and not self.nonfinite_seen_this_step:
                # One reduction and one host sync: 1.01-1.05x, where isfinite().all() on
                # every module costs 1.2-1.3x (FIELD-NOTES).
                import torch

                total = float(tensor.detach().sum(dtype=torch.float32))
                if not math.isfinite(total):
                    self._record_nonfinite(module, args, tensor)

    def _record_nonfinite(self, module: Any, args: Any, output: Any) -> None:
        self.nonfinite_seen_this_step = True
        self.nonfinite_events += 1
        import torch

        inp = _first_tensor(args)
        in_range = None
        if inp is not None and inp.is_floating_point() and inp.numel():
            finite = inp.detach().float()
            finite = finite[torch.isfinite(finite)]
            if finite.numel():
                in_range = [float(finite.min()), float(finite.max())]
        name = self._module_name(module)
        input_finite = None
        if inp is not None and inp.is_floating_point():
            input_finite = bool(torch.isfinite(inp.detach()).all())
        fp32: dict[str, Any] = {}
        if self.fp16_autocast_depth and input_finite:
            fp32 = self._recompute_fp32(torch, module, args, output)
        self.emit(
            "nonfinite", module=name, cls=type(module).__name__, step=self.step_count,
            dtype=str(output.dtype), fp16_autocast=bool(self.fp16_autocast_depth),
            input_range=in_range, input_finite=input_finite, loc=_loc(4), **fp32,
        )

    def _recompute_fp32(self, torch: Any, module: Any, args: Any, output: Any) -> dict[str, Any]:
        """Run the module again in fp32 (autocast off, no grad): does it overflow only in fp16?

        Once per non-finite event (at most one a step): buffers and the RNG are restored so the
        user's training is not disturbed.
        """
        device = output.device.type
        rng = torch.random.get_rng_state()
        buffers = [(b, b.detach().clone()) for b in module.buffers()]
        was_enabled = torch.is_autocast_enabled(device)
        try:
            torch.set_autocast_enabled(device, False)
            cast = [a.detach().float() if hasattr(a, "is_floating_point") and a.is_floating_point() else a
                    for a in (args if isinstance(args, tuple) else (args,))]
            with torch.no_grad():
                out = _first_tensor(module(*cast))
            if out is None or not out.is_floating_point():
                return {}
            finite = bool(torch.isfinite(out).all())
            max_abs = float(out.detach().abs().max()) if finite and out.numel() else None
            return {"fp32_finite": finite, "fp32_max_abs": max_abs}
        except Exception:
            return {}
        finally:
            torch.set_autocast_enabled(device, was_enabled)
            with torch.no_grad():
                for buffer, saved in buffers:
                    buffer.copy_(saved)
            torch.random.set_rng_state(rng)

    def _module_name(self, module: Any) -> str:
        for pname, param in module.named_parameters(recurse=False):
            index = self.param_ids.get(id(param))
            if index is not None and index in self.param_names:
                full = self.param_names[index]
                return full[: -len(pname) - 1] if full.endswith("." + pname) else full
        return type(module).__name__

    def detailed(self, count: int) -> bool:
        """Whether the count-th step or backward gets the costly measurements (norms, graph).

        The first five and every tenth: enough to see what a loop does, at a per-step cost
        that stays within the overhead target on small models.
        """
        return count <= 5 or count % 10 == 0

    def optimizer_pre_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._check_budget(optimizer)
        self._optimizer_index(optimizer)
        # LBFGS and any step(closure) run forward and backward inside step(), possibly many times.
        # torch passes the hook step()'s own arguments, self first.
        self.step_closure = (len(args) > 1 and callable(args[1])) or callable((kwargs or {}).get("closure"))
        self.pre_step = None
        if self.detailed(self.step_count + 1):
            import torch

            params = [p for g in optimizer.param_groups for p in g["params"]]
            self.pre_step = stepstats.snapshot(torch, params, copy=stepstats.update_sampled(self.step_count + 1))

    def optimizer_post_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        import torch

        index = self._optimizer_index(optimizer)
        self.attempts[id(optimizer)] = self.attempts.get(id(optimizer), 0) + 1
        self.step_count += 1
        params = [p for g in optimizer.param_groups for p in g["params"]]
        ids = [self._param_index(p) for p in params]
        with_grad = [(i, p.grad) for i, p in zip(ids, params) if p.grad is not None]
        measured: dict[str, Any] = {}
        if self.pre_step is not None:
            # Sampled steps only (see detailed()): norms cost a reduction per tensor and a sync.
            measured = stepstats.measure(torch, self.pre_step, params, [g for _, g in with_grad])
            measured["changed"] = [i for i, moved in zip(ids, measured.pop("changed_mask")) if moved]
            measured.update(self.param_states())
        if self.step_count == 1:
            self.emit_histograms(params, "first")
        if self.step_closure:
            measured["closure"] = True
        self.emit(
            "step", opt=index, n=self.step_count, backwards=self.backwards_since_step,
            lrs=[_num(g.get("lr")) for g in optimizer.param_groups],
            grad=[i for i, _ in with_grad], loc=_loc(4), **measured,
        )
        self.backwards_since_step = 0
        self.nonfinite_seen_this_step = False
        self.pre_step = None
        self.stepped = (index, params)

    def param_states(self) -> dict[str, list[int]]:
        """Model parameters that are frozen, and trainable ones that no optimizer holds (with a gradient or not).

        Taken on sampled steps: one attribute read per parameter, no tensor work.
        """
        held = set()
        for ref in self.optimizer_refs:
            optimizer = ref()
            if optimizer is not None:
                held.update(id(p) for g in optimizer.param_groups for p in g["params"])
        frozen, outside, outside_grad = [], [], []
        for index, ref in self.param_refs.items():
            param = ref()
            if param is None:
                continue
            if not param.requires_grad:
                frozen.append(index)
            elif id(param) not in held:
                outside.append(index)
                if param.grad is not None:
                    outside_grad.append(index)
        return {"frozen": frozen, "outside": outside, "outside_grad": outside_grad}

    def emit_module_flags(self, root: Any, when: str) -> None:
        """``requires_grad``/``require_grad`` set as plain attributes on modules or parameters: freezes that freeze nothing."""
        found = []
        try:
            for name, sub in root.named_modules():
                for attr in ("requires_grad", "require_grad"):
                    if attr in sub.__dict__:
                        found.append({"module": name, "cls": type(sub).__name__, "attr": attr,
                                      "value": _num(sub.__dict__[attr]), "params": [
                                          self._param_index(p) for p in sub.parameters()][:200]})
            for name, param in root.named_parameters():
                if "require_grad" in getattr(param, "__dict__", {}):
                    found.append({"param": name, "id": self._param_index(param), "attr": "require_grad",
                                  "value": _num(param.__dict__["require_grad"])})
        except Exception:
            return
        if found:
            self.emit("module_flags", when=when, root=type(root).__name__, flags=found)

    def record_final(self) -> None:
        """Once, at the budget or the end of a process that trained: what the run ends with (CC002, CC006)."""
        if self.final_recorded or not self.step_count:
            return
        self.final_recorded = True
        try:
            import torch

            params = self._final_params()
            # A digest two runs can compare: the sum and norm of every optimized parameter.
            with torch.no_grad():
                total = float(sum(float(p.detach().double().sum()) for p in params)) if params else None
            cudnn = torch.backends.cudnn
            self.emit(
                "final", steps=self.step_count, param_sum=total, params_summed=len(params),
                param_norms=stepstats.norms(torch, params),
                **self._recorded_final(), cudnn_benchmark=bool(cudnn.benchmark), cudnn_deterministic=bool(cudnn.deterministic),
                deterministic_algorithms=bool(torch.are_deterministic_algorithms_enabled()),
            )
            for ref in self.root_refs:
                root = ref()
                if root is not None:
                    self.emit_module_flags(root, "final")
        except Exception:
            pass

    def _final_params(self) -> list[Any]:
        """The parameters of every optimizer still alive; those of the last step when its only optimizer is gone.

        A script that returns from ``main()`` leaves its optimizer to the garbage collector, which may or may not
        have run by the end: the parameters of the last step, held since it, give both runs the same digest.
        """
        params = []
        for ref in self.optimizer_refs:
            optimizer = ref()
            if optimizer is not None:
                params.extend(p for g in optimizer.param_groups for p in g["params"])
        if not params and len(self.optimizer_refs) == 1 and self.stepped is not None:
            params = list(self.stepped[1])
        return params

    def _recorded_final(self) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        for recorder in self.recorders.values():
            try:
                fields.update(recorder.final_fields())
            except Exception as exc:
                self._probe_error(f"recorder {recorder.name} (final)", exc)
        return fields

    def emit_histograms(self, params: list[Any], when: str) -> None:
        """Weight and gradient histograms of the largest parameters (first and last step)."""
        import torch

        self.last_params = list(params)
        largest = sorted(params, key=lambda p: -p.numel())[: stepstats.HISTOGRAM_LAYERS]
        tensors = []
        for param in largest:
            index = self._param_index(param)
            tensors.append({"param": index, "kind": "weight", **stepstats.histogram(torch, param)})
            if param.grad is not None:
                tensors.append({"param": index, "kind": "grad", **stepstats.histogram(torch, param.grad)})
        self.emit("histograms", when=when, step=self.step_count, tensors=tensors)

    # -- patched functions -------------------------------------------------------

    def on_backward(self, tensors: Any) -> None:
        tensor = tensors[0] if isinstance(tensors, (tuple, list)) and tensors else tensors
        if self.stopping:
            # The budget was met and its StopRun swallowed (`except BaseException: pass`); a loop
            # that goes on without optimizer.step() would otherwise run until --timeout.
            self.hard_exit(0)
        loss = None
        sampled: dict[str, Any] = {}
        if getattr(tensor, "numel", None) is not None:
            if tensor.numel() == 1:
                loss = float(tensor.detach().reshape(()).float())
                scale = self.scaled_losses.pop(id(tensor), None)
                if scale:
                    loss /= scale
                    sampled["loss_scale"] = scale
                self.scaled_losses.clear()
            if self.detailed(self.backward_count + 1):
                # Only sampled backwards carry "graph" (see detailed()); the loss formula rarely changes.
                graph = self.recorders.get("graph")
                if graph is not None:
                    sampled["graph"] = graph.summarize(tensor)
                if self.backwards_since_step == 0 and self.stepped is not None:
                    sampled["stale_grads"] = self._stale_grads()
        self.backward_count += 1
        self.backwards_since_step += 1
        if loss is not None and not math.isfinite(loss):
            # Check every module's output from now on to find where it started.
            self.armed_nonfinite = True
        in_eval, eval_roots = [], []
        for root_index, (_, moded) in enumerate(self.mode_modules):
            names = [name for name, sub in moded if not sub.training]
            if names:
                # Which model (index of its "model" event) and how many of the names are its own:
                # a frozen teacher in eval mode is no bug.
                eval_roots.append([root_index, len(names)])
                in_eval += names
        if in_eval:
            sampled["eval_modules"] = in_eval[:50]
            sampled["eval_roots"] = eval_roots
        self.emit("backward", n=self.backward_count, step=self.step_count, loss=loss, loc=self._loss_loc(), **sampled)
        for recorder in self.backward_recorders:
            recorder.on_backward(tensor)

    def _loss_loc(self) -> list[Any] | None:
        """Where the loss was made: the backward's line, or the user's forward a framework called back.

        HF Trainer and Lightning call backward() themselves, after the user's ``compute_loss`` or
        ``training_step`` returned: the line that started the library (``trainer.train()``) says
        nothing, the last forward inside the user's own callback says where the loss came from.
        """
        loc = _loc(5)
        forward = self.forward_frame
        if forward is not None and called_by_library(4):
            here = user_frame(4)
            if here is None or forward[2] > here[2]:
                return [forward[0], forward[1]]
        return loc

    def _stale_grads(self) -> dict[str, Any]:
        """Gradients the first backward after a step adds to: left over unless something cleared them."""
        import torch

        index, params = self.stepped  # type: ignore[misc]
        present = [p.grad for p in params if p.grad is not None]
        norm = math.sqrt(sum(n * n for n in stepstats.norms(torch, present))) if present else 0.0
        return {"opt": index, "present": len(present), "of": len(params), "norm": norm}

    def install(self) -> None:
        """Register global hooks and patches; called once torch is imported."""
        import torch
        import torch.nn.modules.module as module_mod
        import torch.optim.optimizer as optim_mod

        hook = self.patches.hook
        self.handles.append(module_mod.register_module_forward_pre_hook(hook("forward_pre_hook", self.forward_pre_hook)))
        self.handles.append(module_mod.register_module_forward_hook(hook("forward_hook", self.forward_hook),
                                                                    always_call=True))
        # A step inside a torch.compile'd function must still count (the budget, CC003's accumulation).
        self.handles.append(optim_mod.register_optimizer_step_pre_hook(
            hook("optimizer_step_pre_hook", self.optimizer_pre_hook, eager_under_compile=True)))
        self.handles.append(optim_mod.register_optimizer_step_post_hook(
            hook("optimizer_step_post_hook", self.optimizer_post_hook, eager_under_compile=True)))
        _install_patches(self, torch)
        self._install_recorders(torch)
        from convcheck.runtime.cuda_shim import install_cuda_shim

        install_cuda_shim(self, torch, os.environ.get(env.DEVICE, "auto"), os.environ.get(env.PRETEND_CUDA) == "1")

    def _install_recorders(self, torch: Any) -> None:
        """Install the recorders the run's checks need; say which, and what they patched."""
        from convcheck.runtime.recorders import recorders_for

        wanted = os.environ.get(env.RECORDERS)
        names = None if wanted is None else {n for n in wanted.split(",") if n}
        before = len(self.patches.labels())
        for name, cls in recorders_for(names).items():
            if names is not None and name not in names:
                continue
            try:
                recorder = cls(self)
                recorder.install(torch, self.patches)
                self.recorders[name] = recorder
                if recorder.follows_forward():
                    self.forward_recorders.append(recorder)
                if recorder.follows_backward():
                    self.backward_recorders.append(recorder)
            except Exception as exc:
                self._probe_error(f"recorder {name}", exc)
        self.emit("recorders", names=sorted(self.recorders), patched=self.patches.labels()[before:])

    def uninstall(self) -> None:
        """Remove every hook and patch."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.patches.undo_all()
        self.recorders.clear()
        self.forward_recorders.clear()
        self.backward_recorders.clear()

    # -- data loading ------------------------------------------------------------

    def open_epoch(self, iterator: Any) -> None:
        loader = iterator._convcheck_loader if hasattr(iterator, "_convcheck_loader") else None
        loader_id = self.loader_ids.get(id(loader), -1) if loader is not None else -1
        count = getattr(loader, "_convcheck_epochs", 0) + 1 if loader is not None else 1
        if loader is not None:
            loader._convcheck_epochs = count
        record = {"loader": loader_id, "epoch": count, "batches": 0, "indices": [], "n_indices": 0,
                  "hash": hashlib.blake2b(digest_size=8), "step_start": self.step_count, "first_batch": None}
        stale = self._open_epochs.pop(id(iterator), None)
        if stale is not None:
            # Two live iterators never share an id: this one belonged to an iterator dropped unfinished.
            self._close_epoch(stale, complete=False)
        self._open_epochs[id(iterator)] = record

    def record_indices(self, iterator: Any, index: Any) -> None:
        record = self._open_epochs.get(id(iterator))
        if record is None:
            return
        flat = index if isinstance(index, (list, tuple)) else [index]
        for item in flat:
            value = int(item) if isinstance(item, int) or hasattr(item, "__index__") else hash(repr(item))
            record["hash"].update(value.to_bytes(8, "little", signed=True))
            if record["n_indices"] < _MAX_RECORDED_INDICES:
                record["indices"].append(value)
            record["n_indices"] += 1

    def note_batch(self, iterator: Any, batch: Any) -> None:
        """Fingerprint the epoch's first batch (sum and shape of its first tensor): once per epoch.

        Equal indices on two ranks mean equal samples only if the ranks read the same dataset;
        the fingerprint tells per-rank datasets (shards) apart.
        """
        record = self._open_epochs.get(id(iterator))
        if record is None or record["first_batch"] is not None:
            return
        tensor = _first_tensor(batch)
        if tensor is None:
            record["first_batch"] = ""
            return
        try:
            record["first_batch"] = f"{list(tensor.shape)}:{float(tensor.detach().double().sum())!r}"
        except Exception:
            record["first_batch"] = ""

    def repeated_batch(self, iterator: Any, batch: Any) -> Any:
        """The loader's first batch in place of ``batch`` (the overfit-one-batch run); records when it starts."""
        loader = getattr(iterator, "_convcheck_loader", None)
        key = id(loader)
        if key not in self.first_batches:
            self.first_batches[key] = batch
            self.emit("repeat_batch", loader=self.loader_ids.get(key, -1), step=self.step_count,
                      fingerprint=self._fingerprint(batch))
        # A copy each time: a loop that edits its batch in place must not change the next one.
        return _clone_batch(self.first_batches[key])

    @staticmethod
    def _fingerprint(batch: Any) -> str:
        tensor = _first_tensor(batch)
        if tensor is None:
            return ""
        try:
            return f"{list(tensor.shape)}:{float(tensor.detach().double().sum())!r}"
        except Exception:
            return ""

    def count_batch(self, iterator: Any) -> bool:
        """Count a batch; False when the epoch should end here (--max-batches-per-epoch)."""
        record = self._open_epochs.get(id(iterator))
        if record is None:
            return True
        if self.max_batches is not None and record["batches"] >= self.max_batches:
            self._close_epoch(record, complete=False)
            self._open_epochs.pop(id(iterator), None)
            return False
        if self.epoch_steps and self._auto_cap_reached(iterator, record):
            self._close_epoch(record, complete=False)
            self._open_epochs.pop(id(iterator), None)
            return False
        record["batches"] += 1
        return True

    def _auto_cap_reached(self, iterator: Any, record: Event) -> bool:
        """Whether a training loop's pass has had its share of steps (decided at the first batch after a step)."""
        from convcheck.runtime import epochcap

        cap = record.get("auto_cap")
        loader = getattr(iterator, "_convcheck_loader", None)
        if cap is None:
            if self.step_count == record["step_start"]:
                # No step yet in this pass: still accumulating, or a validation pass.
                if not self._evaluation_cut(iterator, loader, record):
                    return False
                cap = record["auto_cap"]
            else:
                if loader is not None:
                    loader._convcheck_trained = True
                site = epochcap.repeating_for_loop(sys._getframe(2))
                cut = loader is not None and epochcap.shortened(site, record["epoch"])
                cap = record["auto_cap"] = record["batches"] * self.epoch_steps if cut else 0
                # Validation passes are shortened alongside the training passes, to as many batches.
                self._evaluation_batches = cap
                if loader is not None:
                    self._set_auto_len(loader, record, cap, site, steps=self.epoch_steps)
        if not cap or record["batches"] < cap:
            return False
        cut = record.pop("auto_cut", None)
        if cut is not None and not getattr(loader, "_convcheck_cut_recorded", False):
            loader._convcheck_cut_recorded = True
            self.emit("epoch_cap", loader=record["loader"], batches=cap, steps=cut["steps"],
                      full_batches=cut["full"], step=self.step_count, loc=cut["loc"])
        return True

    def _evaluation_cut(self, iterator: Any, loader: Any, record: Event) -> bool:
        """Whether a pass without steps ends here: a validation pass while training passes are shortened.

        Only a loader that never fed a step, pulled under ``torch.no_grad()`` by a ``for`` statement, after as
        many batches as the shortened training pass: validation over a full evaluation set would otherwise
        take longer than the whole run.
        """
        from convcheck.runtime import epochcap

        if loader is None or getattr(loader, "_convcheck_trained", False):
            return False
        limit = self._evaluation_batches
        if not limit:
            if getattr(loader, "_convcheck_auto_cap", 0):
                loader._convcheck_auto_cap = 0  # training passes run in full again: so do these
            return False
        if record["batches"] < limit:
            return False
        torch = sys.modules.get("torch")
        if torch is None or torch.is_grad_enabled():
            return False
        site = epochcap.repeating_for_loop(sys._getframe(3))
        record["auto_cap"] = limit if site is not None else 0
        if site is not None:
            self._set_auto_len(loader, record, limit, site, steps=None)
        return site is not None

    @staticmethod
    def _set_auto_len(loader: Any, record: Event, cap: int, site: Any, steps: int | None) -> None:
        """Make len(loader) answer the shortened pass while passes are shortened (the full one after)."""
        loader._convcheck_auto_cap = 0
        full = _safe_len(loader)
        loader._convcheck_auto_cap = cap
        if cap and (full is None or full > cap):
            record["auto_cut"] = {"full": full, "loc": [site.file, site.line], "steps": steps}

    def end_epoch(self, iterator: Any) -> None:
        record = self._open_epochs.pop(id(iterator), None)
        if record is not None:
            self._close_epoch(record, complete=True)

    def _close_epoch(self, record: Event, complete: bool) -> None:
        self.emit("loader_epoch", loader=record["loader"], epoch=record["epoch"], batches=record["batches"],
                  n_indices=record["n_indices"], digest=record["hash"].hexdigest(),
                  indices=record["indices"], complete=complete, step=self.step_count,
                  step_start=record.get("step_start"), first_batch=record.get("first_batch"))

    # -- process lifecycle -----------------------------------------------------------

    def after_fork_in_child(self) -> None:
        """A forked child (DataLoader worker, mp.Process): its own trace, nothing inherited."""
        self.writer.reset_after_fork()
        self.finished = False
        # A DataLoader worker forked from a process that trains records no end-of-run digest of its own.
        self.final_recorded = self.final_recorded or self.step_count > 0
        self._open_epochs = {}
        for recorder in self.recorders.values():
            recorder.after_fork()
        self.header("forked-child")
        register_stack_dump(self.writer.trace_dir)
        multiprocessing.util.Finalize(self, self.finish, args=("exited",), exitpriority=100)


def _install_patches(probe: Probe, torch: Any) -> None:
    """Patch what torch offers no hook for. Each wrapper records, then defers to the original."""
    patches = probe.patches

    # autograd has no global pre-backward hook; the loss graph must be read before it is freed.
    # Tensor.backward calls torch.autograd.backward, so this sees both spellings.
    current_task = getattr(torch._C, "_current_graph_task_id", lambda: -1)

    def wrap_backward(original: Any) -> Any:
        def backward(tensors: Any, *args: Any, **kwargs: Any) -> Any:
            # A backward started inside another one's graph (reentrant activation checkpointing re-running
            # its function) is part of that backward, not one of the script's own.
            if current_task() == -1:
                probe.on_backward(tensors)
            return original(tensors, *args, **kwargs)

        return backward

    # Eager under torch.compile: dynamo breaks its graph at backward() anyway.
    patches.wrap(torch.autograd, "backward", wrap_backward, eager_under_compile=True)

    # Optimizer construction site: no hook exists for optimizer creation.
    def wrap_optimizer_init(original: Any) -> Any:
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            if not hasattr(self, "_convcheck_loc"):
                self._convcheck_loc = _loc(3)
            original(self, *args, **kwargs)

        return __init__

    patches.wrap(torch.optim.Optimizer, "__init__", wrap_optimizer_init)

    def wrap_zero_grad(kind: str) -> Any:
        def make(original: Any) -> Any:
            def zero_grad(self: Any, *args: Any, **kwargs: Any) -> Any:
                # Which optimizer: known once it has stepped (no event is emitted for it here).
                opt = probe.optimizer_ids.get(id(self)) if kind == "optimizer" else None
                probe.emit("zero_grad", kind=kind, step=probe.step_count, opt=opt,
                           backwards=probe.backwards_since_step, loc=_loc(3))
                return original(self, *args, **kwargs)

            return zero_grad

        return make

    # Where gradients are cleared relative to backward and step: no hook reports it.
    # Gradients cleared inside a torch.compile'd step are still cleared (CC008): recorded eagerly.
    patches.wrap(torch.optim.Optimizer, "zero_grad", wrap_zero_grad("optimizer"), eager_under_compile=True)
    patches.wrap(torch.nn.Module, "zero_grad", wrap_zero_grad("module"), eager_under_compile=True)

    _patch_data(probe, torch, patches)
    _patch_checkpoints(probe, torch, patches)
    _patch_distributed(probe, torch, patches)
    _patch_amp(probe, torch, patches)


def _patch_data(probe: Probe, torch: Any, patches: Patches) -> None:
    from torch.utils.data import DataLoader, DistributedSampler
    from torch.utils.data import dataloader as dl

    # DataLoader and sampler construction and iteration have no hooks.
    def wrap_loader_init(original: Any) -> Any:
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            index = probe.loader_ids.setdefault(id(self), len(probe.loader_ids))
            sampler = getattr(self, "sampler", None)
            batch_sampler = getattr(self, "batch_sampler", None)
            inner = getattr(batch_sampler, "sampler", None)
            probe.emit(
                "loader", id=index, batch_size=self.batch_size, num_workers=self.num_workers,
                sampler=type(sampler).__name__, batch_sampler=type(batch_sampler).__name__,
                batch_sampler_inner=type(inner).__name__ if inner is not None else None,
                sampler_id=probe.sampler_ids.get(id(sampler), probe.sampler_ids.get(id(inner))),
                worker_init_fn=self.worker_init_fn is not None, generator=self.generator is not None,
                drop_last=bool(self.drop_last), dataset=type(self.dataset).__name__,
                dataset_len=_safe_len(self.dataset), loc=_loc(3),
                dataset_rngs=_owned_rngs(self.dataset, torch),
                persistent_workers=bool(getattr(self, "persistent_workers", False)),
            )

        return __init__

    patches.wrap(DataLoader, "__init__", wrap_loader_init)

    base_iter = dl._BaseDataLoaderIter

    def wrap_iter_init(original: Any) -> Any:
        def __init__(self: Any, loader: Any) -> None:
            original(self, loader)
            self._convcheck_loader = loader
            probe.open_epoch(self)

        return __init__

    def wrap_next_index(original: Any) -> Any:
        def _next_index(self: Any) -> Any:
            index = original(self)
            probe.record_indices(self, index)
            return index

        return _next_index

    def wrap_next(original: Any) -> Any:
        def __next__(self: Any) -> Any:
            if not probe.count_batch(self):
                raise StopIteration
            try:
                batch = original(self)
            except StopIteration:
                probe.end_epoch(self)
                raise
            probe.note_batch(self, batch)
            if probe.repeat_first_batch:
                batch = probe.repeated_batch(self, batch)
            return batch

        return __next__

    patches.wrap(base_iter, "__init__", wrap_iter_init)
    patches.wrap(base_iter, "_next_index", wrap_next_index)
    patches.wrap(base_iter, "__next__", wrap_next, deliberate=(StopIteration,))

    if probe.max_batches is not None or probe.epoch_steps:
        fixed = probe.max_batches

        # Epochs end after `cap` batches (count_batch); a length that says otherwise makes code that sizes
        # epochs from len(loader) (HF Trainer, Lightning, a scheduler's total_steps) stop or schedule early.
        # A shortened training loop's loader answers its cap once it is known (after its first step).
        def wrap_len(original: Any) -> Any:
            def __len__(self: Any) -> int:
                cap = fixed or getattr(self, "_convcheck_auto_cap", 0)
                return min(original(self), cap) if cap else original(self)

            return __len__

        patches.wrap(DataLoader, "__len__", wrap_len)

    def wrap_sampler_init(original: Any) -> Any:
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            index = probe.sampler_ids.setdefault(id(self), len(probe.sampler_ids))
            probe.emit("sampler", id=index, cls=type(self).__name__, shuffle=bool(getattr(self, "shuffle", False)),
                       num_replicas=getattr(self, "num_replicas", None), rank=getattr(self, "rank", None),
                       seed=getattr(self, "seed", None), drop_last=getattr(self, "drop_last", None),
                       loc=_loc(3))

        return __init__

    def wrap_sampler_iter(original: Any) -> Any:
        def __iter__(self: Any) -> Any:
            indices = list(original(self))
            digest = hashlib.blake2b(repr(indices).encode(), digest_size=8).hexdigest()
            probe.emit("sampler_iter", id=probe.sampler_ids.get(id(self)), epoch=getattr(self, "epoch", None),
                       digest=digest, n=len(indices), step=probe.step_count)
            return iter(indices)

        return __iter__

    def wrap_set_epoch(original: Any) -> Any:
        def set_epoch(self: Any, epoch: int) -> None:
            probe.emit("set_epoch", id=probe.sampler_ids.get(id(self)), epoch=_num(epoch), loc=_loc(3))
            return original(self, epoch)

        return set_epoch

    patches.wrap(DistributedSampler, "__init__", wrap_sampler_init)
    patches.wrap(DistributedSampler, "__iter__", wrap_sampler_iter)
    patches.wrap(DistributedSampler, "set_epoch", wrap_set_epoch)


def _patch_checkpoints(probe: Probe, torch: Any, patches: Patches) -> None:
    import torch.serialization

    # torch.save/torch.load take paths the user owns: a diagnostic run must never
    # overwrite them, so writes go to the scratch folder and later loads follow them.
    def wrap_save(original: Any) -> Any:
        def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> Any:
            target = f
            redirected = None
            if isinstance(f, (str, os.PathLike)) and probe.scratch_dir:
                redirected = fsguard.redirect_write(f) if fsguard.active() else probe.scratch_path(f)
                target = redirected or f
            path = _path_of(f)
            if redirected is None and path is not None and fsguard.active():
                # A file object opened through the guard is named after the run's copy: record the user's path.
                user_path = fsguard.original_path(path)
                if user_path is not None:
                    path, redirected = user_path, path
            # internal: a library's torch.save (distributed checkpoint writers, a trainer's own saving).
            probe.emit("save", path=path, redirected_to=redirected, internal=is_library_file(caller_file()),
                       state_dicts=_state_dict_summaries(obj, torch, empty=True), loc=_loc(3),
                       step=probe.step_count)
            return original(obj, target, *args, **kwargs)

        return save

    def wrap_load(original: Any) -> Any:
        def load(f: Any, *args: Any, **kwargs: Any) -> Any:
            source = f
            redirected = None
            if isinstance(f, (str, os.PathLike)) and probe.scratch_dir:
                candidate = fsguard.redirect_read(f) if fsguard.active() else probe.scratch_path(f)
                if candidate and os.path.exists(candidate):
                    redirected = source = candidate
            result = original(source, *args, **kwargs)
            probe.emit("load", path=_path_of(f), redirected_from=redirected,
                       state_dicts=_state_dict_summaries(result, torch), loc=_loc(3), step=probe.step_count)
            return result

        return load

    for owner in (torch, torch.serialization):
        patches.wrap(owner, "save", wrap_save)
        patches.wrap(owner, "load", wrap_load)

    # load_state_dict raises on a strict mismatch before saying what loaded; compute
    # missing/unexpected ourselves from the keys so strict and non-strict look alike.
    def wrap_load_state_dict(original: Any) -> Any:
        def load_state_dict(self: Any, state_dict: Any, strict: bool = True, *args: Any, **kwargs: Any) -> Any:
            try:
                expected = set(self.state_dict().keys())
                given = [k for k in state_dict.keys()] if hasattr(state_dict, "keys") else []
                given_set = set(given)
                missing = sorted(expected - given_set)
                unexpected = sorted(given_set - expected)
                probe.emit(
                    "load_state_dict", module=type(self).__name__, strict=bool(strict),
                    n_expected=len(expected), n_given=len(given_set), n_loaded=len(expected & given_set),
                    missing=missing[:50], unexpected=[str(k) for k in unexpected[:50]],
                    n_missing=len(missing), n_unexpected=len(unexpected), loc=_loc(3),
                )
            except Exception:
                pass
            return original(self, state_dict, strict, *args, **kwargs)

        return load_state_dict

    patches.wrap(torch.nn.Module, "load_state_dict", wrap_load_state_dict)


def _patch_distributed(probe: Probe, torch: Any, patches: Patches) -> None:
    import torch.distributed as dist

    if not dist.is_available():
        return

    # No hook reports a process group's creation; the rank of an mp.spawn child
    # is known only from it.
    def wrap_init(original: Any) -> Any:
        def init_process_group(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            probe.emit("dist_init", backend=str(dist.get_backend()), rank=dist.get_rank(),
                       world_size=dist.get_world_size(), loc=_loc(3))
            return result

        return init_process_group

    patches.wrap(dist, "init_process_group", wrap_init)

    from torch.nn.parallel import DistributedDataParallel

    # Which modules DDP wraps, and whether they are moved or cast after wrapping (CC013's cause): DDP
    # hooks the parameters it was built with; no hook reports either event.
    def wrap_ddp_init(original: Any) -> Any:
        def __init__(self: Any, module: Any, *args: Any, **kwargs: Any) -> None:
            original(self, module, *args, **kwargs)
            probe.ddp_modules.update((id(self), id(module)))
            probe.emit("ddp_init", module=type(module).__name__, loc=_loc(3), step=probe.step_count)

        return __init__

    def wrap_apply(original: Any) -> Any:
        def _apply(self: Any, *args: Any, **kwargs: Any) -> Any:
            if id(self) not in probe.ddp_modules or probe.moving_ddp:
                return original(self, *args, **kwargs)
            frame = caller_frame()
            probe.emit("ddp_module_moved", how=frame.f_code.co_name if frame is not None else "_apply",
                       cls=type(self).__name__, loc=_loc(3), step=probe.step_count)
            probe.moving_ddp = True
            try:
                return original(self, *args, **kwargs)
            finally:
                probe.moving_ddp = False

        return _apply

    patches.wrap(DistributedDataParallel, "__init__", wrap_ddp_init)
    patches.wrap(torch.nn.Module, "_apply", wrap_apply)

    # A script that starts its own ranks with mp.spawn, run with --nproc-per-node N, would start N
    # launchers each spawning its own ranks (or none, when it counts GPUs): stop with what to do instead.
    import torch.multiprocessing as tmp

    # The package re-exports a function named spawn over its submodule of that name.
    spawn_mod = sys.modules["torch.multiprocessing.spawn"]

    nproc = os.environ.get(env.NPROC_PER_NODE)

    def wrap_start(original: Any) -> Any:
        def start_processes(*args: Any, **kwargs: Any) -> Any:
            if nproc and probe.is_entry():
                loc = _loc(3)
                probe.emit("self_spawn", loc=loc, nproc_per_node=int(nproc))
                where = f" (at {loc[0]}:{loc[1]})" if loc else ""
                raise SelfSpawnUnderNproc(
                    f"This script starts its own processes with torch.multiprocessing{where}, and "
                    f"--nproc-per-node {nproc} started {nproc} copies of it, each of which would start its own "
                    f"ranks. Run it as one process instead: `convcheck run --pretend-cuda --cuda-devices {nproc} "
                    f"{sys.argv[0] if sys.argv else 'SCRIPT'}` (the script then sees that many GPUs, if it counts "
                    "them) or without --nproc-per-node."
                )
            return original(*args, **kwargs)

        return start_processes

    for owner in (spawn_mod, tmp):
        patches.wrap(owner, "start_processes", wrap_start, deliberate=(SelfSpawnUnderNproc,))


def _patch_amp(probe: Probe, torch: Any, patches: Patches) -> None:
    from torch.amp import autocast_mode, grad_scaler

    autocast_cls = autocast_mode.autocast

    # Autocast regions and GradScaler calls have no hooks; their order is the evidence.
    def wrap_enter(original: Any) -> Any:
        def __enter__(self: Any) -> Any:
            result = original(self)
            fp16 = bool(self._enabled) and self.fast_dtype == torch.float16
            self._convcheck_fp16 = fp16
            if fp16:
                probe.fp16_autocast_depth += 1
            if probe.backward_count < 3 or not fp16:
                probe.emit("autocast", device=self.device, dtype=str(self.fast_dtype), enabled=bool(self._enabled),
                           loc=_loc(3), step=probe.step_count)
            return result

        return __enter__

    def wrap_exit(original: Any) -> Any:
        def __exit__(self: Any, *args: Any) -> Any:
            if getattr(self, "_convcheck_fp16", False):
                probe.fp16_autocast_depth = max(0, probe.fp16_autocast_depth - 1)
                self._convcheck_fp16 = False
            return original(self, *args)

        return __exit__

    patches.wrap(autocast_cls, "__enter__", wrap_enter)
    patches.wrap(autocast_cls, "__exit__", wrap_exit)

    scaler_cls = grad_scaler.GradScaler

    def scaler_scale(self: Any) -> float | None:
        scale = getattr(self, "_scale", None)
        return float(scale) if scale is not None else None

    def record_call(name: str) -> Any:
        def make(original: Any) -> Any:
            def method(self: Any, *args: Any, **kwargs: Any) -> Any:
                if not self.is_enabled():
                    # A disabled scaler (GradScaler(enabled=False), nanoGPT's bf16/fp32 path) is a
                    # pass-through with no per-optimizer state: optimizer.step's own hooks see the step.
                    if not getattr(self, "_convcheck_passthrough", False):
                        self._convcheck_passthrough = True
                        probe.emit("scaler_passthrough", call=name, step=probe.step_count, loc=_loc(3))
                    return original(self, *args, **kwargs)
                optimizer = args[0] if args and name in ("unscale_", "step") else None
                if name == "step" and optimizer is not None:
                    probe._check_budget(optimizer)
                result = original(self, *args, **kwargs)
                fields: dict[str, Any] = {"call": name, "scale": scaler_scale(self), "step": probe.step_count}
                if name == "scale" and fields["scale"]:
                    # backward() will see loss * scale: remember it so the loss is recorded unscaled.
                    probe.scaled_losses[id(result)] = fields["scale"]
                if optimizer is not None:
                    fields["opt"] = probe._optimizer_index(optimizer)
                if name == "step" and optimizer is not None:
                    state = getattr(self, "_per_optimizer_states", {}).get(id(optimizer), {})
                    found = state.get("found_inf_per_device", {})
                    skipped = bool(sum(float(v) for v in found.values())) if found else False
                    fields["skipped"] = skipped
                    if skipped:
                        probe.attempts[id(optimizer)] = probe.attempts.get(id(optimizer), 0) + 1
                if name != "scale" or probe.backward_count < 3:
                    fields["loc"] = _loc(3)
                probe.emit("scaler", **fields)
                return result

            return method

        return make

    for name in ("scale", "unscale_", "step", "update"):
        patches.wrap(scaler_cls, name, record_call(name))

    # clip_grad_norm_ is a free function; whether it ran before unscale_ is CC007's evidence.
    def wrap_clip(original: Any) -> Any:
        def clip_grad_norm_(parameters: Any, max_norm: float, *args: Any, **kwargs: Any) -> Any:
            total = original(parameters, max_norm, *args, **kwargs)
            probe.emit("clip", kind="norm", max_norm=_num(max_norm), total_norm=_num(total),
                       loc=_loc(3), step=probe.step_count)
            return total

        return clip_grad_norm_

    import torch.nn.utils.clip_grad as clip_mod

    patches.wrap(torch.nn.utils, "clip_grad_norm_", wrap_clip)
    patches.wrap(clip_mod, "clip_grad_norm_", wrap_clip)


def _owned_rngs(dataset: Any, torch: Any) -> list[dict[str, str]]:
    """Random generators a dataset holds as attributes (each DataLoader worker gets a copy of them)."""
    import random

    kinds: list[Any] = [random.Random, torch.Generator]
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        kinds += [numpy.random.RandomState, numpy.random.Generator]
    found = []
    try:
        for name, value in list(vars(dataset).items())[:100]:
            if isinstance(value, tuple(kinds)):
                found.append({"attr": name, "cls": type(value).__name__})
    except TypeError:
        pass
    return found


def _plain_container(root: Any, module: Any) -> tuple[str | None, str | None]:
    """Where a module that is no submodule is kept: ``layers[2]`` in a plain list of the model (or of one
    of its submodules), with the holder's class and attribute; (None, None) when it is not found."""
    for prefix, holder in list(root.named_modules())[:500]:
        for attr, value in vars(holder).items():
            if attr.startswith("_"):
                continue
            items = value.items() if isinstance(value, dict) else enumerate(value) \
                if isinstance(value, (list, tuple)) else ()
            for key, item in items:
                if item is module:
                    name = f"{prefix + '.' if prefix else ''}{attr}[{key!r}]"
                    return name, f"{type(holder).__name__}.{attr} ({type(value).__name__})"
    return None, None


def _clone_batch(value: Any) -> Any:
    """A copy of a batch's tensors, in the same nesting (tuples, lists, dicts)."""
    if hasattr(value, "clone") and hasattr(value, "is_floating_point"):
        return value.clone()
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_clone_batch(v) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_clone_batch(v) for v in value)
    if isinstance(value, dict):
        return {k: _clone_batch(v) for k, v in value.items()}
    return value


def _is_shared(param: Any) -> bool:
    try:
        return bool(param.is_shared())
    except Exception:
        return False


def _shape_of(param: Any) -> list[int] | None:
    """A parameter's shape; None for a lazy module's parameter before its first forward has sized it."""
    try:
        return list(param.shape)
    except RuntimeError:
        return None


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value and value.lstrip("-").isdigit() else None


def _safe_len(obj: Any) -> int | None:
    try:
        return len(obj)
    except Exception:
        return None


def _path_of(f: Any) -> str | None:
    if isinstance(f, (str, os.PathLike)):
        return os.fspath(f)
    return getattr(f, "name", None) if isinstance(getattr(f, "name", None), str) else None


def _state_dict_summaries(obj: Any, torch: Any, path: tuple[str, ...] = (), depth: int = 0,
                          empty: bool = False) -> list[dict[str, Any]]:
    """Every state_dict-like mapping (string keys, tensor values) in a payload, with its keys; with ``empty``,
    also a ``Module.state_dict()`` that holds no key (it carries ``_metadata``): a model that owns nothing."""
    found: list[dict[str, Any]] = []
    if not isinstance(obj, dict) or depth > 3:
        return found
    keys = list(obj.keys())
    if empty and not keys and hasattr(obj, "_metadata"):
        return [{"path": list(path), "n_keys": 0, "keys": []}]
    tensors = [k for k in keys if isinstance(obj[k], torch.Tensor)]
    if keys and all(isinstance(k, str) for k in keys) and len(tensors) * 2 >= len(keys) and tensors:
        found.append({"path": list(path), "n_keys": len(keys), "keys": [str(k) for k in keys[:_MAX_RECORDED_KEYS]]})
        return found
    for key, value in obj.items():
        if isinstance(value, dict):
            found.extend(_state_dict_summaries(value, torch, path + (str(key),), depth + 1, empty))
    return found


_probe: Probe | None = None
_stack_files: dict[int, Any] = {}


def register_stack_dump(trace_dir: str) -> None:
    """On SIGUSR1 write every thread's stack to ``stack-<host>-<pid>.txt``: the launcher asks at a timeout.

    faulthandler writes from the signal handler itself, so this works even while
    the main thread is blocked inside a C call such as a gloo collective.
    """
    import faulthandler
    import signal

    if not hasattr(signal, "SIGUSR1") or os.getpid() in _stack_files:
        return
    handle = open(os.path.join(trace_dir, f"stack-{process_tag()}.txt"), "w", encoding="utf-8")
    _stack_files[os.getpid()] = handle
    faulthandler.register(signal.SIGUSR1, file=handle, all_threads=True, chain=False)


def write_exit_record(outcome: dict[str, Any]) -> None:
    """How the entry process ended, for the launcher: ``exit-<host>-<pid>.json`` (first write wins)."""
    trace_dir = os.environ.get(env.TRACE_DIR)
    if not trace_dir:
        return
    path = os.path.join(trace_dir, f"exit-{process_tag()}.json")
    if os.path.exists(path):
        return
    import json
    import time

    try:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump({**outcome, "time": time.time()}, fh)
    except OSError:
        pass  # the trace folder is gone (cleaned up after the report): nothing left to tell


def active_probe() -> Probe | None:
    """The probe of this process, if the run installed one."""
    return _probe


def install_from_env() -> Probe | None:
    """Create and install this process's probe from the run's environment variables."""
    global _probe
    if _probe is not None:
        return _probe
    trace_dir = os.environ.get(env.TRACE_DIR)
    if not trace_dir:
        return None
    max_batches = os.environ.get(env.MAX_BATCHES)
    probe = Probe(
        trace_dir=trace_dir,
        scratch_dir=os.environ.get(env.SCRATCH_DIR) or None,
        steps=int(os.environ.get(env.STEPS, "20")),
        max_batches=int(max_batches) if max_batches else None,
        epoch_steps=int(os.environ.get(env.EPOCH_STEPS) or 0) or None,
    )
    _probe = probe
    try:
        probe.header("entry" if probe.is_entry() else "child")
        probe.install()
    except Exception:
        probe.emit("probe_error", traceback=traceback.format_exc())
    register_stack_dump(trace_dir)
    import atexit

    atexit.register(probe.finish, "exited")
    multiprocessing.util.Finalize(probe, probe.finish, args=("exited",), exitpriority=100)
    multiprocessing.util.register_after_fork(probe, Probe.after_fork_in_child)
    return probe
