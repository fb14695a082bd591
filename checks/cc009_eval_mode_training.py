"""CC009 eval-mode-training: optimizer steps taken while dropout or batch-norm modules are in eval mode."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from convcheck.findings import Finding, Severity
from convcheck.paths import display_loc
from convcheck.registry import Check
from convcheck.runtime.trace import Event, ProcessTrace, RunTrace
from convcheck.static.calls import Calls, Where
from convcheck.static.context import StaticContext, dotted_name
from convcheck.static.flow import same_file

_FIX = (
    "Call `model.train()` before the training loop and again after every evaluation (`model.eval()` stays "
    "in effect until it is undone): e.g. at the start of each epoch, before the first batch."
)
_NORM_CLASSES = ("BatchNorm", "SyncBatchNorm", "InstanceNorm", "LazyBatchNorm")


class EvalModeTraining(Check):
    """## What it does
    Finds `backward()` and optimizer steps taken while dropout or batch-norm modules of the model being
    trained are in eval mode, typically because `model.eval()` was called for validation and
    `model.train()` never followed. It reports where the model was last switched to eval mode and the
    first step that trained in it. Models with no dropout or batch-norm layer behave the same in both
    modes and are not reported; neither is a frozen model (a teacher) whose parameters get no gradient,
    also when it is a part of the trained module (a LightningModule's `self.teacher`).

    From the source it finds a loop that trains (`backward()`) and calls `x.eval()` but nothing in it
    calls `train()`, following calls into the script's own functions (`evaluate(model, loader)`): the
    `eval()` line inside the function is reported, with the line that calls it. When the run proved it,
    the run's finding stands alone; when the run ended before that line ran, on a model with dropout or
    batch norm, it is a warning; with `--static-only` it is info (the model's layers are not known).
    Parts frozen with `requires_grad_(False)` and parts named like a teacher, an EMA or a target network
    are taken as kept in eval mode on purpose.

    ## Why is this bad?
    In eval mode dropout does nothing and batch norm normalizes with its running statistics instead of
    the batch's and stops updating them. Training in eval mode silently removes regularization and
    changes what the network computes: the loss curve differs from the one the author tuned, and models
    that depend on batch statistics can stall or diverge. After the first validation pass every later
    epoch trains this way.

    ## Example
    ```python
    for epoch in range(epochs):
        for x, y in train_loader:
            ...
        model.eval()              # for validation; never undone
        evaluate(model, val_loader)
    ```

    ## Use instead
    ```python
    for epoch in range(epochs):
        model.train()
        for x, y in train_loader:
            ...
        model.eval()
        evaluate(model, val_loader)
    ```

    ## Fix
    Call `model.train()` at the start of each training phase. Freezing only batch-norm layers on
    purpose (fine-tuning with `requires_grad=False` on their weights) is recognised and not reported,
    and so is a frozen part of the model put in eval mode on purpose (`model.backbone.eval()` over a
    backbone whose parameters get no gradient); a partly-eval model whose eval layers still train is a
    warning, since it may be intended.

    ## Known limits
    Only dropout, batch-norm and instance-norm layers are watched: a custom module that branches on
    `self.training` is not. A part of the model in eval mode that gets no gradient is taken as frozen on
    purpose. The switch is seen only when the run reaches it: a training loop's long epochs are shortened
    so that the first validation falls within the step budget, but validation every few epochs, or a loop
    that is not shortened (pulled with `next()`, a framework's loop), needs `--max-batches-per-epoch` and
    enough `--steps`. An `eval()` inside one of the script's own functions is reported at its line, with
    the line that calls the function; functions of other modules are not followed.
    """

    code = "CC009"
    name = "eval-mode-training"
    severity = Severity.ERROR
    summary = "backward() and optimizer steps while dropout or batch-norm modules are in eval mode."
    needs = frozenset({"modes"})

    _pending: list[Finding]

    # -- static ------------------------------------------------------------------------------

    def check_static(self, ctx: StaticContext) -> Iterable[Finding]:
        found = []
        for site in static_eval_never_undone(ctx):
            message = (f"`{site.call}` ({site.eval.describe()}) runs in the loop at line {site.loop} that also "
                       f"trains (`backward()` at {site.backward.describe()}), and nothing in that loop switches back "
                       "with `train()`: from its second pass on, dropout and batch-norm layers (if the model has "
                       "any) train in eval mode.")
            found.append(self.finding(message, fix=_FIX, location=(ctx.display_path, site.eval.line),
                                      severity=Severity.INFO, source="static",
                                      evidence={"eval_line": site.eval.line, "loop_line": site.loop,
                                                "eval_calls": [{"helper": n, "line": line}
                                                               for n, line in site.eval.calls]}))
        return self.defer_static(found)

    def _unreached(self, proc: ProcessTrace | None, ctx: StaticContext) -> list[Finding]:
        """Static findings whose eval() the run never reached, on a model with dropout or batch norm: a warning."""
        pending, self._pending = list(getattr(self, "_pending", [])), []
        if proc is None or not pending:
            return []
        kinds = sorted({m["cls"] for model in proc.of("model") for m in model.get("mode_modules", [])})
        if not kinds:
            return []  # the run's model behaves the same in both modes
        reached = {e.get("loc")[1] for e in proc.of("train_mode")
                   if not e.get("mode") and e.get("loc") and same_file(str(e["loc"][0]), ctx)}
        steps = len(proc.of("step"))
        found = []
        for finding in pending:
            if finding.evidence["eval_line"] in reached:
                continue  # the run went past it and saw no step in eval mode
            message = (f"{finding.message} The model has {', '.join(kinds)} layers; the run ended after {steps} "
                       "optimizer steps, before this line ran.")
            found.append(self.finding(message, fix=_FIX, location=finding.location, severity=Severity.WARNING,
                                      source="static+runtime", evidence={**finding.evidence, "module_classes": kinds,
                                                                         "steps_total": steps}))
        return found

    # -- runtime -----------------------------------------------------------------------------

    def check_runtime(self, run: RunTrace, ctx: StaticContext) -> Iterable[Finding]:
        proc = next(iter(run.trainers), None)
        found = list(self._runtime(proc, ctx))
        unreached = self._unreached(proc, ctx)
        return found or unreached

    def _runtime(self, proc: ProcessTrace | None, ctx: StaticContext) -> Iterable[Finding]:
        if proc is None:
            return []
        models = proc.of("model")
        if not any(m.get("mode_modules") for m in models):
            return []
        bad, total, trained_roots = _steps_in_eval(proc, models)
        if not bad:
            return []
        first_step, backward, names = bad[0]
        all_modes = {m["name"] for m in _trained_mode_modules(models, backward, trained_roots)}
        classes = {m["name"]: m["cls"] for model in models for m in model.get("mode_modules", [])}
        frozen = _frozen_module_names(models)
        untrained = _untrained(models, proc)
        # Frozen on purpose: batch-norm layers whose own weights are frozen, and any layer of a part of
        # the model that trains nothing (a frozen backbone put in eval mode, the "frozen BatchNorm" recipe).
        deliberate = [n for n in names if (_is_norm(classes.get(n, "")) and n in frozen) or untrained(n)]
        names = [n for n in names if n not in deliberate]
        if not names:
            return []
        objs = {models[r].get("obj") for r in trained_roots if r < len(models)} - {None}
        switch = _last_eval_call(proc, backward, objs)
        location = switch.get("loc") if switch else backward.get("loc")
        everything = set(names) >= all_modes - set(deliberate)
        kinds = sorted({classes.get(n, "?") for n in names})
        listed = ", ".join(f"`{n}`" for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        steps = [n for n, _, _ in bad]
        trained_before = list(range(1, first_step))
        where = ""
        if switch:
            helper = _helper_text(switch.get("loc"), ctx)
            where = (f" `{switch.get('cls', 'model')}.eval()` at {display_loc(switch.get('loc'))} "
                     f"(step {switch.get('step')}){helper}")
            where = f" It was switched to eval mode by{where} and not back to train mode."
        message = (
            f"{len(steps)} of {total} optimizer steps (from step {first_step}) trained with {listed} "
            f"({', '.join(kinds)}) in eval mode: dropout is off and batch norm uses its running statistics."
            f"{where}"
        )
        if len(trained_before) == 1:
            message += " Step 1 trained in train mode."
        elif trained_before:
            message += f" Steps 1-{first_step - 1} trained in train mode."
        severity = Severity.ERROR if everything else Severity.WARNING
        if not everything:
            message += " Other layers of the same kind were in train mode: if only these are frozen on purpose, " \
                       "suppress this finding."
        evidence: dict[str, Any] = {
            "steps_in_eval": steps[:20], "steps_total": total, "first_step": first_step,
            "modules_in_eval": names[:50], "module_classes": kinds, "all_mode_modules_in_eval": everything,
            "eval_call_loc": switch.get("loc") if switch else None, "backward_loc": backward.get("loc"),
        }
        return [self.finding(message, fix=_FIX, location=location, severity=severity, evidence=evidence,
                             headline="modules_in_eval")]


@dataclass(frozen=True)
class EvalSite:
    """An ``eval()`` in a loop that trains, with no ``train()`` anywhere in that loop."""

    call: str
    eval: Where
    backward: Where
    loop: int


def static_eval_never_undone(ctx: StaticContext) -> list[EvalSite]:
    """Loops whose body (and the script's functions it calls) runs ``backward()`` and ``x.eval()`` but never
    ``x.train()``; the innermost such loop for each eval() call."""
    calls = Calls(ctx)
    frozen = _frozen_names(ctx)
    found: dict[tuple[int, tuple], EvalSite] = {}
    for loop in ast.walk(ctx.tree):
        if not isinstance(loop, (ast.For, ast.AsyncFor, ast.While)):
            continue
        reached = calls.reached(loop.body)
        backward = next((w for c, w in reached if _method(c) == "backward"), None)
        evals = [(c, w) for c, w in reached if _method(c) == "eval" and not c.args and not c.keywords
                 and _receiver(c) not in frozen and not any(word in _receiver(c) for word in _DELIBERATE_WORDS)]
        if backward is None or not evals or any(_switches_to_train(c) for c, _ in reached):
            continue
        for call, where in evals:
            # ast.walk goes outside in: an inner loop that matches replaces its outer loop.
            found[(where.line, where.calls)] = EvalSite(ast.unparse(call), where, backward, loop.lineno)
    return list(found.values())


#: Parts of a model kept in eval mode on purpose, by the names scripts give them.
_DELIBERATE_WORDS = ("teacher", "ema", "frozen", "target", "reference", "ref_")


def _receiver(call: ast.Call) -> str:
    """The last name of what a method is called on: ``teacher`` for ``self.teacher.eval()``."""
    value = call.func.value if isinstance(call.func, ast.Attribute) else call.func
    return (dotted_name(value) or "").rsplit(".", 1)[-1].lower()


def _frozen_names(ctx: StaticContext) -> set[str]:
    """Last names of what the script freezes with ``x.requires_grad_(False)``: eval mode there is deliberate."""
    return {_receiver(c) for c in ctx.calls() if _method(c) == "requires_grad_" and c.args
            and isinstance(c.args[0], ast.Constant) and c.args[0].value is False}


def _method(call: ast.Call) -> str | None:
    return call.func.attr if isinstance(call.func, ast.Attribute) else None


def _switches_to_train(call: ast.Call) -> bool:
    """``x.train()``, ``x.train(True)``, ``x.train(mode=flag)``: anything but ``train(False)``."""
    if _method(call) != "train":
        return False
    arg = call.args[0] if call.args else next((k.value for k in call.keywords if k.arg == "mode"), None)
    return not (isinstance(arg, ast.Constant) and arg.value is False)


def _steps_in_eval(proc: ProcessTrace, models: list[Event]) -> tuple[list[tuple[int, Event, list[str]]], int, set[int]]:
    """Steps whose last backward ran with eval-mode modules of a model that gets gradients."""
    trained_roots = set()
    params_of = [{p["id"] for p in m.get("params", [])} for m in models]
    bad = []
    total = 0
    last_backward: Event | None = None
    for event in proc.events:
        if event["ev"] == "backward":
            last_backward = event
        elif event["ev"] == "step":
            total += 1
            grads = set(event.get("grad") or [])
            for index, params in enumerate(params_of):
                if params & grads:
                    trained_roots.add(index)
            if last_backward is None or not last_backward.get("eval_modules"):
                continue
            names = _trained_eval_names(models, last_backward, trained_roots)
            # A teacher held by the trained model (a LightningModule's `self.teacher`) gets no gradient either.
            param_names = {p["id"]: p["name"] for r in trained_roots for p in models[r].get("params", [])}
            names = [n for n in names if not _in_untrained_part(n, param_names, grads)]
            if names:
                bad.append((event.get("n"), last_backward, names))
    return bad, total, trained_roots


def _in_untrained_part(name: str, param_names: dict[int, str], grads: set[int]) -> bool:
    """Whether a submodule above ``name`` (not the whole model) has parameters and none of them got a gradient."""
    parts = name.split(".")
    for depth in range(1, len(parts) + 1):
        prefix = ".".join(parts[:depth]) + "."
        under = [pid for pid, pname in param_names.items() if pname.startswith(prefix)]
        if under and not any(pid in grads for pid in under):
            return True
    return False


def _eval_by_root(backward: Event) -> list[tuple[int | None, list[str]]]:
    """The eval-mode module names of a backward, per model (None: the model is not known)."""
    names = list(backward.get("eval_modules") or [])
    roots = backward.get("eval_roots")
    if roots is None:
        return [(None, names)]
    found, start = [], 0
    for root, count in roots:
        found.append((int(root), names[start:start + count]))
        start += count
    return found


def _trained_eval_names(models: list[Event], backward: Event, trained_roots: set[int]) -> list[str]:
    names: list[str] = []
    for root, own in _eval_by_root(backward):
        if root is None or root in trained_roots:
            names += [n for n in own if n not in names]
    return names


def _trained_mode_modules(models: list[Event], backward: Event, trained_roots: set[int]) -> list[dict]:
    roots = [r for r, _ in _eval_by_root(backward) if r is not None and r in trained_roots]
    chosen = [models[r] for r in roots if r < len(models)] if roots else models
    return [m for model in chosen for m in model.get("mode_modules", [])]


def _frozen_module_names(models: list[Event]) -> set[str]:
    """Modules whose own parameters all have requires_grad=False."""
    by_module: dict[str, list[bool]] = {}
    for model in models:
        for param in model.get("params", []):
            owner = param["name"].rsplit(".", 1)[0] if "." in param["name"] else ""
            by_module.setdefault(owner, []).append(bool(param.get("requires_grad", True)))
    return {name for name, flags in by_module.items() if flags and not any(flags)}


def _untrained(models: list[Event], proc: ProcessTrace) -> Any:
    """A test: does the module's nearest part of the model that holds parameters (itself, or the closest
    enclosing module) get no gradient at any step? Such a part is frozen; its mode changes nothing trained."""
    names = {p["id"]: p["name"] for m in models for p in m.get("params", [])}
    with_grad = {names[i] for e in proc.of("step") for i in e.get("grad") or [] if i in names}
    all_names = set(names.values())

    def untrained(module: str) -> bool:
        for prefix in ("module.", "_orig_mod."):
            # Parameter names are recorded without a wrapper's prefix; module names keep it.
            if module.startswith(prefix) and not any(n.startswith(module + ".") for n in all_names):
                module = module[len(prefix):]
        parts = module.split(".") if module else []
        while parts:
            prefix = ".".join(parts) + "."
            owned = [n for n in all_names if n.startswith(prefix)]
            if owned:
                return not any(n in with_grad for n in owned)
            parts.pop()
        return False

    return untrained


def _is_norm(cls: str) -> bool:
    return cls.startswith(_NORM_CLASSES)


def _last_eval_call(proc: ProcessTrace, backward: Event, objs: set[int]) -> Event | None:
    """The last train(False)/eval() call before this backward: on a trained model if one was, else any."""
    found = None
    own = None
    for event in proc.events:
        if event is backward:
            break
        if event["ev"] == "train_mode":
            found = event if not event.get("mode") else None
            if event.get("obj") in objs:
                own = event if not event.get("mode") else None
    return own or found


def _helper_text(loc: Any, ctx: StaticContext | None) -> str:
    """`` in `evaluate()`, called at line 40`` when the eval() call sits in one of the script's helpers."""
    if ctx is None or not loc or len(loc) < 2 or not same_file(str(loc[0]), ctx):
        return ""
    places = [place for place in Calls(ctx).at_line(int(loc[1])) if place.calls]
    if not places:
        return ""
    name, call = places[0].calls[-1]
    return f" in `{name}()`, called at line {call},"


