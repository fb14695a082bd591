"""CC006 frozen-parameters: parameters that cannot train although the script means them to, and freezes
that freeze nothing."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from convcheck.findings import Finding, Severity
from convcheck.layerflow import blocked_params
from convcheck.paths import display_loc
from convcheck.registry import Check
from convcheck.runtime.trace import Event, ProcessTrace, RunTrace
from convcheck.static.calls import Calls, Where
from convcheck.static.context import StaticContext, dotted_name
from convcheck.static.flow import last_segment, user_location

_FIX_ATTR = (
    "Freeze the parameters, not the module: `module.requires_grad_(False)` (with the underscore and "
    "parentheses), or `for p in module.parameters(): p.requires_grad = False`."
)
_FIX_TYPO = "Spell it `requires_grad`: `p.requires_grad = False` (or `module.requires_grad_(False)`)."
_FIX_OUTSIDE = (
    "Build the optimizer after the model is final: after replacing a module and after unfreezing. Or add "
    "the new parameters with `optimizer.add_param_group({'params': module.parameters()})`. Building it from "
    "`filter(lambda p: p.requires_grad, ...)` leaves out everything frozen at that moment for good."
)
_FIX_UNUSED = (
    "Use the module in forward(), or leave it out of the model and the optimizer. If it is used only in some "
    "steps, this can be expected; under DDP it needs find_unused_parameters=True."
)
_FIX_NOT_CHANGED = "Give the parameter group a learning rate above 0 (check the scheduler), or freeze it on purpose."
_FIX_FROZEN = (
    "If the module should train, set `requires_grad_(True)` on it before building the optimizer; if it "
    "should stay frozen, freeze it in the script (`module.requires_grad_(False)`) so the intent is visible."
)
_FIX_SWAPPED = (
    "Freeze the part that should stay fixed and build the optimizer over what trains: e.g. "
    "`backbone.requires_grad_(False)` then `torch.optim.AdamW(p for p in model.parameters() if p.requires_grad)`."
)
_FIX_ALL_FROZEN = (
    "Freeze only what should stay fixed (`model.backbone.requires_grad_(False)`) and keep the rest trainable; "
    "if a library loaded the model frozen, call `requires_grad_(True)` on the part that should train."
)
_FIX_IDLE = (
    "Add the module's parameters to the optimizer if it should train; if it should stay frozen, freeze it "
    "with `module.requires_grad_(False)` so that no gradient is computed for it."
)


class FrozenParameters(Check):
    """## What it does
    Tabulates, per module, which parameters train and which cannot: frozen (`requires_grad=False`),
    trainable but held by no optimizer, held by an optimizer but never given a gradient, or given
    gradients but never changed. From the source and the run it finds freezes that freeze nothing:
    `module.requires_grad = False` on an `nn.Module`, and the `require_grad` typo. It names an optimizer
    that holds only frozen parameters while the parameters that get gradients are in none (the freeze
    and the optimizer swapped). Layers called in `forward()` but kept in a plain list, dict or tuple are
    CC016's finding (unregistered-submodule): their parameters are left out of this check's
    "in no optimizer" findings.

    Severities follow what the run proved:
    - error: a parameter the script unfreezes or replaces that no optimizer holds; every parameter of
      the model frozen, so that backward() fails (frameworks build the optimizer from the trainable
      parameters, so this shows only as that crash); a parameter that computes gradients but that no
      optimizer holds (a Lightning `configure_optimizers` over the head only while the backbone still
      has `requires_grad=True`). For the last one the run saw the gradient computed and never applied,
      and the one way to say "keep this fixed" is `requires_grad=False`, which also saves the backward
      work; where it is wanted anyway, suppress it with `# convcheck: ignore[CC006]`.
    - warning: a whole module that never trains although no line of the script freezes it (a library
      or a loaded checkpoint may have frozen it on purpose); a module that never receives a gradient,
      or never changes (used only in some steps, or a learning rate of 0 during warm-up, is possible).
    - info: a deliberate freeze (the script freezes it and leaves it out of the optimizer).

    ## Why is this bad?
    Fine-tuning code freezes and unfreezes parts of a model and rebuilds heads. An optimizer built from
    `filter(lambda p: p.requires_grad, model.parameters())` keeps only what was trainable at that moment,
    and a head replaced after the optimizer was built is not in it: gradients are computed, nothing is
    updated, and the loss plateaus. `model.requires_grad = False` only sets a Python attribute on the
    module: every parameter keeps training.

    ## Example
    ```python
    for p in model.backbone.parameters():
        p.requires_grad = False
    optimizer = torch.optim.SGD(filter(lambda p: p.requires_grad, model.parameters()), lr=0.1)
    ...
    for p in model.backbone.parameters():  # unfreeze later: the optimizer never sees them
        p.requires_grad = True
    ```

    ## Use instead
    ```python
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # frozen parameters simply get no gradient
    ```
    or add the unfrozen parameters with `optimizer.add_param_group(...)` when unfreezing.

    ## Fix
    Build the optimizer from every parameter that will ever train (frozen ones get no gradient and are not
    updated), or add them when they are unfrozen or created. Freeze with `requires_grad_(False)`.

    ## Known limits
    Parameters are seen through the modules the run calls (module forward hooks): a model whose `forward` is
    called directly (`model.forward(x)`) is not registered. Gradients and changes are measured on sampled
    steps.
    An unfreeze after a filtered optimizer was built is seen in the run when the run reaches it (a training
    loop's long epochs are shortened for that), otherwise from the source: a statement inside one of the
    script's own functions counts where the function is called (up to three calls out; a method by its
    name when one class of the script defines it). Functions of other modules are not followed, and an
    optimizer built from a list filtered on an earlier line is not recognised as filtered. Parameters whose
    gradient times the lr stays below 1e-6 of their weights' norm are not reported as never changed: such a
    step does not change the norm float32 compares, and the gradient vanished (CC024); nor are layers below a
    ReLU layer that CC024 found dead for the whole batch reported as never given a gradient.
    """

    code = "CC006"
    name = "frozen-parameters"
    severity = Severity.ERROR
    summary = "Parameters meant to train that cannot: frozen, missing from the optimizer, unused, never updated."

    _pending: list[Finding]

    # -- static ------------------------------------------------------------------------------

    def check_static(self, ctx: StaticContext) -> Iterable[Finding]:
        found = list(self._static(ctx))
        return self.defer_static(found)

    def _static(self, ctx: StaticContext) -> Iterable[Finding]:
        for site in static_flag_sites(ctx):
            if site.attr == "require_grad":
                message = (f"`{site.target}.require_grad = ...` sets a misspelt attribute that PyTorch never reads: "
                           "nothing is frozen.")
                yield self.finding(message, fix=_FIX_TYPO, location=(ctx.display_path, site.line),
                                   severity=Severity.ERROR, source="static",
                                   evidence={"target": site.target, "attr": site.attr})
            else:
                message = (f"`{site.target}.requires_grad = ...` looks like a module: on an nn.Module this only sets a "
                           "Python attribute, and its parameters keep their requires_grad.")
                yield self.finding(message, fix=_FIX_ATTR, location=(ctx.display_path, site.line),
                                   severity=Severity.WARNING, source="static",
                                   evidence={"target": site.target, "attr": site.attr})

    # -- runtime -----------------------------------------------------------------------------

    def check_runtime(self, run: RunTrace, ctx: StaticContext) -> Iterable[Finding]:
        pending = list(getattr(self, "_pending", []))
        self._pending = []
        proc = next(iter(run.trainers), None)
        if proc is None:
            return pending
        table = ParamTable.from_trace(proc)
        findings = list(self._flags(proc, table, pending, ctx))
        findings += list(self._all_frozen(proc, table, ctx))
        findings += list(self._table_findings(table, ctx))
        return [*findings, *pending]

    def _flags(self, proc: ProcessTrace, table: ParamTable, pending: list[Finding],
               ctx: StaticContext) -> Iterable[Finding]:
        """Module attributes set by the script that freeze nothing, confirmed by the run."""
        seen: set[tuple[str, str]] = set()
        for event in proc.of("module_flags"):
            for flag in event.get("flags", []):
                where = flag.get("module", flag.get("param", ""))
                key = (where, flag.get("attr", ""))
                if key in seen:
                    continue
                seen.add(key)
                params = flag.get("params") or ([flag["id"]] if "id" in flag else [])
                training = [p for p in params if p not in table.frozen]
                label = where or "the model"
                if flag.get("attr") == "require_grad":
                    message = (f"`{label}.require_grad = {flag.get('value')}` was set during the run: a misspelt "
                               "attribute PyTorch never reads, so nothing was frozen.")
                    fix = _FIX_TYPO
                else:
                    if not training:
                        continue
                    message = (f"`requires_grad = {flag.get('value')}` was set on the module `{label}` "
                               f"({flag.get('cls')}), a plain attribute: {len(training)} of its parameters "
                               "still have requires_grad=True and train.")
                    fix = _FIX_ATTR
                twin = _take_static(pending, flag.get("attr", ""))
                location = twin.location if twin is not None else None
                yield self.finding(
                    message, fix=fix, location=location, severity=Severity.ERROR,
                    source="static+runtime" if twin is not None else "runtime",
                    evidence={"module": label, "attr": flag.get("attr"), "value": flag.get("value"),
                              "parameters_still_training": [table.names.get(p, f"param{p}") for p in training][:10]},
                    headline="parameters_still_training",
                )

    def _all_frozen(self, proc: ProcessTrace, table: ParamTable, ctx: StaticContext) -> Iterable[Finding]:
        """Every parameter of every model frozen: backward() has nothing to differentiate and fails.

        Frameworks (HF Trainer, Lightning) build the optimizer from the trainable parameters, so the
        script crashes at its first backward with no optimizer step to look at.
        """
        if not table.names or not all(p in table.initially_frozen for p in table.names):
            return
        crash = str((proc.crash or {}).get("error") or "")
        if "does not require grad" not in crash:
            return  # a frozen model with a trainable input (style transfer, adversarial examples) is no bug
        models = sorted({m.get("cls", "model") for m in proc.of("model")})
        line = _first_freeze_line(ctx)
        backward = proc.first("backward")
        where = (ctx.display_path, line) if line else user_location((backward or {}).get("loc"), ctx)
        message = (f"Every parameter of {', '.join(f'`{m}`' for m in models)} ({len(table.names)} parameters) has "
                   f"requires_grad=False, so nothing can train: backward() failed (\"{crash}\").")
        yield self.finding(message, fix=_FIX_ALL_FROZEN, location=where, severity=Severity.ERROR,
                           source="static+runtime" if line else "runtime",
                           evidence={"models": models, "frozen": len(table.names), "crash": crash,
                                     "freeze_line": line}, headline="frozen")

    def _table_findings(self, table: ParamTable, ctx: StaticContext) -> Iterable[Finding]:
        if not table.optimized:
            return
        evidence_table = table.module_table()
        opt_where = user_location(table.optimizer_loc, ctx)
        freezes_in_script = _script_freezes(ctx)
        # 0. Layers the model calls but does not own (kept in a plain list or dict) are CC016's finding.
        unregistered_ids = table.unregistered_ids()
        # 1. Trainable parameters no optimizer holds, in a model whose other parameters train.
        outside = [p for p in table.outside if table.root_of(p) in table.optimized_roots and p not in unregistered_ids]
        held_frozen = [p for p in table.optimized if p in table.frozen]
        if outside and held_frozen and len(held_frozen) == len(table.optimized):
            # The freeze and the optimizer disagree: what the optimizer holds is frozen, what trains it lacks.
            got_grad = [p for p in outside if p in table.outside_grad]
            frozen_modules = _whole_modules(held_frozen, table) or _modules_of(held_frozen, table)
            free_modules = _modules_of(outside, table)
            message = (f"Every parameter the optimizer holds is frozen: {_list(frozen_modules)} "
                       f"({len(held_frozen)} parameters, requires_grad=False), so the optimizer built at "
                       f"{display_loc(opt_where)} updates nothing, while {_list(free_modules)} "
                       f"{_verb(free_modules, 'computes', 'compute')} gradients for {len(got_grad or outside)} "
                       "parameters that no optimizer holds. The freeze and the optimizer were meant for each "
                       "other's parameters.")
            yield self.finding(message, fix=_FIX_SWAPPED, location=opt_where, severity=Severity.ERROR,
                               evidence={"modules": evidence_table, "frozen_in_optimizer": _names(held_frozen, table),
                                         "not_in_optimizer": _names(outside, table)},
                               headline="frozen_in_optimizer")
            return
        if outside:
            got_grad = [p for p in outside if p in table.outside_grad]
            unfrozen = [p for p in outside if p in table.initially_frozen]
            orphans = table.orphans()
            modules = _modules_of(outside, table)
            if orphans or unfrozen:
                if orphans:
                    cause = (f"the optimizer holds {len(orphans)} parameters that no module of the model uses any "
                             "more: the module was replaced after the optimizer was built")
                else:
                    cause = ("they were frozen when the optimizer was built (a filter on requires_grad) and "
                             "unfrozen later")
                    place = _unfreezes_later(ctx)
                    if place is not None:
                        cause += f", at {place.describe()}"
                message = (f"{len(outside)} trainable parameters of {_list(modules)} are in no optimizer: {cause}. "
                           f"{'They receive gradients that are never applied' if got_grad else 'They never train'}.")
                yield self.finding(message, fix=_FIX_OUTSIDE, location=opt_where, severity=Severity.ERROR,
                                   evidence={"modules": evidence_table, "not_in_optimizer": _names(outside, table),
                                             "orphaned_in_optimizer": len(orphans),
                                             "unfrozen_after_optimizer": _names(unfrozen, table)},
                                   headline="not_in_optimizer")
            elif got_grad:
                message = (f"{_list(modules)} {_verb(modules, 'computes', 'compute')} gradients for {len(got_grad)} "
                           "parameters, but no optimizer "
                           f"holds them: {_verb(modules, 'the module never trains', 'they never train')}.")
                yield self.finding(message, fix=_FIX_IDLE, location=opt_where, severity=Severity.ERROR,
                                   evidence={"modules": evidence_table, "not_in_optimizer": _names(outside, table)},
                                   headline="not_in_optimizer")
        # 2. Held by an optimizer, trainable, but never given a gradient.
        # Layers run by reentrant checkpointing over inputs that need no grad are CC022's finding; below a
        # dead ReLU layer the gradient is exactly zero although the layers are used: CC024's finding.
        no_grad = [p for p in table.optimized if p not in table.frozen and p not in table.got_grad
                   and p in table.names and p not in table.checkpointed_without_grad and p not in table.blocked]
        # When nothing got a gradient the loss itself is constant (another check's business), not a module.
        if no_grad and table.steps and table.got_grad:
            modules = _whole_modules(no_grad, table)
            if modules:
                message = (f"{_list(modules)} never received a gradient in {table.steps} optimizer steps although "
                           "the parameters are trainable and in the optimizer: not used in forward(), or the output "
                           "does not reach the loss.")
                yield self.finding(message, fix=_FIX_UNUSED, location=opt_where, severity=Severity.WARNING,
                                   evidence={"modules": evidence_table,
                                             "never_given_a_gradient": _names(no_grad, table)},
                                   headline="never_given_a_gradient")
        # 3. Given gradients but never changed on any measured step.
        if table.measured_steps:
            # A gradient far below its weights' float32 resolution moves nothing: it vanished (CC024's finding).
            still = [p for p in table.optimized if p in table.got_grad and p not in table.changed
                     and p in table.measured_grad and p in table.names and p in table.movable]
            modules = _whole_modules(still, table)
            if modules:
                lrs = sorted({table.lr.get(p) for p in still}, key=str)
                why = "the learning rate is 0" if lrs == [0] or lrs == [0.0] else f"learning rate {lrs}"
                message = (f"{_list(modules)} received gradients but the parameters never changed in "
                           f"{table.measured_steps} measured steps ({why}).")
                yield self.finding(message, fix=_FIX_NOT_CHANGED, location=opt_where, severity=Severity.WARNING,
                                   evidence={"modules": evidence_table, "never_changed": _names(still, table),
                                             "learning_rates": lrs}, headline="learning_rates")
        # 4. Frozen modules: deliberate (info) unless nothing in the script freezes anything.
        frozen = [p for p in table.frozen if table.root_of(p) in table.optimized_roots]
        if frozen:
            modules = _whole_modules(frozen, table) or _modules_of(frozen, table)
            excluded = [p for p in frozen if p not in table.optimized_set]
            later = _unfreezes_later(ctx)
            if excluded and later is not None:
                # Frozen and filtered out of the optimizer, and the script unfreezes later (after this short run):
                # from then on they get gradients that no optimizer applies.
                message = (f"{_list(modules)} {_verb(modules, 'is', 'are')} frozen and left out of the optimizer "
                           f"built from a requires_grad filter, and {later.describe()}{',' if later.calls else ''} "
                           f"unfreezes parameters later: {len(excluded)} parameters will get gradients that this optimizer never "
                           "applies.")
                yield self.finding(message, fix=_FIX_OUTSIDE, location=opt_where, severity=Severity.ERROR,
                                   source="static+runtime",
                                   evidence={"modules": evidence_table, "frozen": _names(excluded, table),
                                             "unfreeze_line": later.line, "unfreeze_calls": [
                                                 {"helper": name, "line": line} for name, line in later.calls]},
                                   headline="frozen")
            elif freezes_in_script:
                # The script freezes them itself: that is the intent, and nothing is worth saying.
                pass
            else:
                message = (f"{_list(modules)} never {_verb(modules, 'trains', 'train')}: {len(frozen)} of its "
                           "parameters have requires_grad=False, "
                           "and no line of this script freezes anything (a library or a loaded model did).")
                yield self.finding(message, fix=_FIX_FROZEN, location=opt_where, severity=Severity.WARNING,
                                   evidence={"modules": evidence_table, "frozen": _names(frozen, table)},
                                   headline="frozen")


# -- the table ----------------------------------------------------------------------------------


#: A plain step lr * gradient below this share of the weights' norm leaves their float32 norm (what "changed"
#: compares; float32 resolves 6e-8 of a value) as it was: parameters "never changed" by such gradients have
#: vanishing gradients.
_MOVABLE = 1e-6


@dataclass
class ParamTable:
    """What each model parameter did during the run."""

    names: dict[int, str] = field(default_factory=dict)
    roots: dict[int, int] = field(default_factory=dict)
    initially_frozen: set[int] = field(default_factory=set)
    frozen: set[int] = field(default_factory=set)
    optimized: list[int] = field(default_factory=list)
    optimized_set: set[int] = field(default_factory=set)
    lr: dict[int, Any] = field(default_factory=dict)
    outside: list[int] = field(default_factory=list)
    outside_grad: set[int] = field(default_factory=set)
    got_grad: set[int] = field(default_factory=set)
    measured_grad: set[int] = field(default_factory=set)
    changed: set[int] = field(default_factory=set)
    #: Parameters whose lr * gradient was at least ``_MOVABLE`` of their norm on some measured step.
    movable: set[int] = field(default_factory=set)
    #: Parameters below a layer dead for the whole batch (the ``gradflow`` recorder's evidence, when recorded).
    blocked: set[int] = field(default_factory=set)
    steps: int = 0
    measured_steps: int = 0
    optimizer_loc: Any = None
    #: Layers called in a model's forward that it does not own ("unregistered_module" events).
    unregistered: list[Event] = field(default_factory=list)
    #: Parameters run inside reentrant activation checkpointing whose inputs required no grad.
    checkpointed_without_grad: set[int] = field(default_factory=set)

    @property
    def optimized_roots(self) -> set[int]:
        return {self.roots[p] for p in self.optimized if p in self.roots}

    def root_of(self, param: int) -> int | None:
        return self.roots.get(param)

    def unregistered_ids(self) -> set[int]:
        """The parameters of the layers a model calls but does not own (frozen ones kept out on purpose aside)."""
        return {p["id"] for layer in self.unregistered for p in layer.get("params", [])}

    def orphans(self) -> list[int]:
        """Optimizer parameters that belong to no module of any model seen (replaced modules)."""
        return [p for p in self.optimized if p not in self.names]

    @classmethod
    def from_trace(cls, proc: ProcessTrace) -> ParamTable:
        table = cls()
        for root, model in enumerate(proc.of("model")):
            for param in model.get("params", []):
                table.names.setdefault(param["id"], param["name"])
                table.roots.setdefault(param["id"], root)
                if not param.get("requires_grad", True):
                    table.initially_frozen.add(param["id"])
        for layer in proc.of("unregistered_module"):
            table.unregistered.append(layer)
            for param in layer.get("params", []):
                table.names.setdefault(param["id"], param["name"])
                table.roots.setdefault(param["id"], layer.get("root"))
                if not param.get("requires_grad", True):
                    table.initially_frozen.add(param["id"])
        for call in proc.of("activation_checkpoint"):
            if call.get("reentrant") and call.get("grad_enabled") and not call.get("input_requires_grad"):
                table.checkpointed_without_grad.update(call.get("params") or [])
        for opt in proc.of("optimizer"):
            if table.optimizer_loc is None:
                table.optimizer_loc = opt.get("loc")
            for group in opt.get("groups", []):
                for pid in group.get("params", []):
                    if pid not in table.optimized_set:
                        table.optimized.append(pid)
                        table.optimized_set.add(pid)
                    table.lr[pid] = group.get("lr")
        table.frozen = set(table.initially_frozen)
        table.blocked = blocked_params(proc)
        sampled_state = False
        # A gradient left at zero by zero_grad(set_to_none=False) is no gradient: where norms were measured,
        # only they count.
        measured = any(s.get("grad_norms") is not None for s in proc.of("step"))
        held = {o.get("opt"): [p for g in o.get("groups", []) for p in g.get("params", [])]
                for o in proc.of("optimizer")}
        for step in proc.of("step"):
            table.steps += 1
            grads = step.get("grad") or []
            norms = step.get("grad_norms")
            weights = dict(zip(held.get(step.get("opt"), []), step.get("param_norms") or []))
            if norms is not None and len(norms) == len(grads):
                for pid, norm in zip(grads, norms):
                    if norm and norm > 0:
                        table.got_grad.add(pid)
                        table.measured_grad.add(pid)
                        weight, lr = weights.get(pid), table.lr.get(pid)
                        scaled = norm * lr if isinstance(lr, (int, float)) and lr > 0 else norm
                        if weight is None or not weight > 0 or not scaled < _MOVABLE * weight:
                            table.movable.add(pid)
            elif not measured:
                table.got_grad.update(grads)
            if "changed" in step:
                table.measured_steps += 1
                table.changed.update(step.get("changed") or [])
            if "frozen" in step:
                sampled_state = True
                table.frozen = set(step.get("frozen") or [])
                table.outside = list(step.get("outside") or [])
                table.outside_grad.update(step.get("outside_grad") or [])
        # A frozen layer kept out of the model on purpose (a teacher hidden from state_dict) is no concern.
        for layer in list(table.unregistered):
            ids = {p["id"] for p in layer.get("params", [])}
            if ids <= table.frozen:
                table.unregistered.remove(layer)
                table.frozen -= ids
                for pid in ids:
                    table.names.pop(pid, None)
                    table.roots.pop(pid, None)
        if not sampled_state:
            table.outside = [p for p in table.names if p not in table.optimized_set and p not in table.frozen]
        for lrs_step in proc.of("step")[-1:]:
            lrs = lrs_step.get("lrs") or []
            for opt in proc.of("optimizer")[:1]:
                for group, lr in zip(opt.get("groups", []), lrs):
                    for pid in group.get("params", []):
                        table.lr[pid] = lr
        return table

    def module_table(self) -> list[dict[str, Any]]:
        """Per module: parameters that train, are frozen, are in no optimizer, got no gradient, never changed."""
        rows: dict[str, dict[str, Any]] = {}
        for pid, name in self.names.items():
            module = _module(name)
            row = rows.setdefault(module, {"module": module, "params": 0, "trainable": 0, "frozen": 0,
                                           "not_in_optimizer": 0, "no_gradient": 0, "never_changed": 0})
            row["params"] += 1
            if pid in self.frozen:
                row["frozen"] += 1
            elif pid not in self.optimized_set:
                row["not_in_optimizer"] += 1
            elif pid not in self.got_grad:
                row["no_gradient"] += 1
            elif self.measured_steps and pid in self.measured_grad and pid not in self.changed:
                row["never_changed"] += 1
            else:
                row["trainable"] += 1
        return list(rows.values())[:50]


def _module(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else "(top level)"


def _modules_of(params: list[int], table: ParamTable) -> list[str]:
    """The largest modules all of whose parameters are in ``params``, then the parents of the rest."""
    whole = _whole_modules(params, table)
    found = list(whole)
    for pid in params:
        name = table.names.get(pid, f"param{pid}")
        if any(_under(name, m) for m in whole):
            continue
        module = _module(name)
        if module not in found:
            found.append(module)
    return found


def _under(name: str, module: str) -> bool:
    return module == "(top level)" and "." not in name or name.startswith(module + ".")


def _whole_modules(params: list[int], table: ParamTable) -> list[str]:
    """The largest modules (by name prefix) all of whose parameters are in ``params``."""
    chosen = set(params)
    prefixes: dict[str, list[int]] = {}
    for pid, name in table.names.items():
        parts = name.split(".")[:-1]
        if not parts:
            prefixes.setdefault("(top level)", []).append(pid)
        for depth in range(1, len(parts) + 1):
            prefixes.setdefault(".".join(parts[:depth]), []).append(pid)
    found: list[str] = []
    for prefix in sorted(prefixes, key=lambda p: (p.count("."), p)):
        pids = prefixes[prefix]
        if all(p in chosen for p in pids) and not any(prefix.startswith(f + ".") for f in found):
            found.append(prefix)
    return found


def _names(params: list[int], table: ParamTable) -> list[str]:
    return [table.names.get(p, f"param{p}") for p in params][:20]


def _verb(modules: list[str], singular: str, plural: str) -> str:
    return singular if len(modules) == 1 else plural


def _list(modules: list[str]) -> str:
    quoted = [f"`{m}`" for m in modules[:4]]
    more = f" and {len(modules) - 4} more" if len(modules) > 4 else ""
    return ("module " if len(modules) == 1 else "modules ") + ", ".join(quoted) + more


def _take_static(pending: list[Finding], attr: str) -> Finding | None:
    for finding in pending:
        if finding.evidence.get("attr") == attr:
            pending.remove(finding)
            return finding
    return None


# -- static analysis ----------------------------------------------------------------------------


@dataclass
class FlagSite:
    line: int
    target: str
    attr: str


_PARAM_WORDS = ("param", "weight", "bias", "tensor", "embedding_weight")
_MODULE_WORDS = ("model", "net", "encoder", "decoder", "backbone", "layer", "head", "module", "block", "features",
                 "classifier", "embed", "trunk", "body", "stem", "tower", "bert", "resnet", "vit")


def static_flag_sites(ctx: StaticContext) -> list[FlagSite]:
    """``x.require_grad = ...`` anywhere, and ``module.requires_grad = ...`` where ``x`` is not a parameter."""
    param_vars = _parameter_variables(ctx.tree)
    sites = []
    for node in ast.walk(ctx.tree):
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            if not isinstance(target, ast.Attribute) or target.attr not in ("requires_grad", "require_grad"):
                continue
            base = dotted_name(target.value) or ast.unparse(target.value)
            if target.attr == "require_grad":
                sites.append(FlagSite(node.lineno, base, "require_grad"))
                continue
            if _is_parameter(target.value, base, param_vars):
                continue
            freezing = isinstance(node.value, ast.Constant) and node.value.value is False
            if not freezing and not any(word in last_segment(base).lower() for word in _MODULE_WORDS):
                continue  # inputs.requires_grad = True (saliency, adversarial inputs): a tensor
            sites.append(FlagSite(node.lineno, base, "requires_grad"))
    return sorted(sites, key=lambda s: s.line)


def _is_parameter(node: ast.AST, base: str, param_vars: set[str]) -> bool:
    if base in param_vars:
        return True
    last = last_segment(base).lower()
    if any(word in last for word in _PARAM_WORDS) or last in ("p", "w", "b", "x", "t"):
        return True
    if isinstance(node, ast.Subscript):
        return True  # params[0].requires_grad, list(model.parameters())[i]
    if isinstance(node, ast.Call):
        return True
    return False


def _parameter_variables(tree: ast.AST) -> set[str]:
    """Loop variables over ``.parameters()``/``.named_parameters()`` (and the like)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        loops: list[tuple[ast.AST, ast.AST]] = []
        if isinstance(node, (ast.For, ast.AsyncFor)):
            loops.append((node.target, node.iter))
        elif isinstance(node, ast.comprehension):
            loops.append((node.target, node.iter))
        for target, iterator in loops:
            text = ast.unparse(iterator)
            if "parameters(" not in text and "params" not in text:
                continue
            if isinstance(target, ast.Tuple) and target.elts:
                name = dotted_name(target.elts[-1])
            else:
                name = dotted_name(target)
            if name:
                names.add(name)
    return names


def _unfreezes_later(ctx: StaticContext) -> Where | None:
    """Where the script first unfreezes parameters after building its optimizer from a requires_grad filter, in
    a script that never adds parameter groups; None otherwise.

    A statement inside one of the script's helpers (``def unfreeze(model): ...``) counts where the helper is
    called: the ``def`` usually sits above the optimizer, the call in the epoch loop below it.
    """
    built_calls = [call for call in ctx.calls() if "requires_grad" in ast.unparse(call) and _is_optimizer_call(call)]
    if not built_calls or any(isinstance(c.func, ast.Attribute) and c.func.attr == "add_param_group"
                              for c in ctx.calls()):
        return None
    calls = Calls(ctx)
    built = min(place.order for call in built_calls for place in calls.places(call))
    found = []
    for node in ast.walk(ctx.tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and node.value.value is True:
            if any(isinstance(t, ast.Attribute) and t.attr == "requires_grad" for t in node.targets):
                found += calls.places(node)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "requires_grad_":
            arg = node.args[0] if node.args else None
            if arg is None or (isinstance(arg, ast.Constant) and arg.value is True):
                found += calls.places(node)
    # Unfreezing the head before building the filtered optimizer is the usual, correct recipe.
    later = [place for place in found if place.order > built]
    return min(later, key=lambda place: place.order) if later else None


def _is_optimizer_call(call: ast.Call) -> bool:
    name = dotted_name(call.func) or ""
    return "optim" in name.lower() or last_segment(name) in (
        "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Adamax", "NAdam", "RAdam", "LBFGS", "Lion",
    )


def _first_freeze_line(ctx: StaticContext) -> int | None:
    """The first line that sets requires_grad False (an assignment or ``requires_grad_(False)``)."""
    lines = []
    for node in ast.walk(ctx.tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and node.value.value is False \
                and any(isinstance(t, ast.Attribute) and t.attr == "requires_grad" for t in node.targets):
            lines.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "requires_grad_" and node.args \
                and isinstance(node.args[0], ast.Constant) and node.args[0].value is False:
            lines.append(node.lineno)
    return min(lines) if lines else None


def _script_freezes(ctx: StaticContext) -> bool:
    """Whether any line of the script freezes something (requires_grad False, requires_grad_(False), a freeze call)."""
    for node in ast.walk(ctx.tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Attribute) and target.attr == "requires_grad":
                    return True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr == "requires_grad_":
                return True
            if "freeze" in node.func.attr.lower():
                return True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and "freeze" in node.func.id.lower():
            return True
    return False


