"""CC001 state-dict-prefix: checkpoints saved from a wrapper, and loads that mismatch only by a prefix."""

from __future__ import annotations

import ast
import os
from collections.abc import Iterable

from convcheck.findings import Finding, Severity
from convcheck.registry import Check
from convcheck.runtime.trace import Event, ProcessTrace, RunTrace
from convcheck.static.context import StaticContext, dotted_name
from convcheck.static.flow import Flow, is_false, keyword, last_segment, resolved_call, user_location
from convcheck.statedict import WRAPPER_PREFIXES, common_wrapper_prefix, strip_leading

#: Keys of a training checkpoint that hold something other than the model's tensors.
_CHECKPOINT_KEYS = frozenset({
    "model", "state_dict", "model_state", "model_state_dict", "net", "network", "optimizer", "optimizer_state",
    "optimizer_state_dict", "optim", "epoch", "step", "global_step", "iteration", "scheduler", "lr_scheduler",
    "scaler", "args", "config", "cfg", "hparams", "hyper_parameters", "best_acc", "best_loss", "loss", "ema",
})
_WRAPPERS = {"DistributedDataParallel": "module.", "DataParallel": "module.", "compile": "_orig_mod."}


def _wrapper_names(prefix: str) -> str:
    names = []
    for part in prefix.split(".")[:-1]:
        name = "DistributedDataParallel/DataParallel" if part == "module" else "torch.compile"
        if name not in names:
            names.append(name)
    return " inside ".join(reversed(names)) if len(names) > 1 else names[0]


def _unwrap_expression(prefix: str) -> str:
    return "model." + "".join(f"{p}." for p in prefix.split(".")[:-1]) + "state_dict()"


def _fix_command(path: str | None) -> str:
    target = path or "CHECKPOINT.pt"
    stem, ext = os.path.splitext(target)
    return f"convcheck fix-state-dict {target} --output {stem}.fixed{ext or '.pt'}"


def _save_fix(prefix: str, path: str | None) -> str:
    return (
        f"Save the unwrapped model: `{_unwrap_expression(prefix)}` (or keep a reference to the model before wrapping "
        f"it and save that). For checkpoints already written, strip the prefix: `{_fix_command(path)}`."
    )


class StateDictPrefix(Check):
    """## What it does
    Finds checkpoints saved from a `DistributedDataParallel`, `DataParallel` or `torch.compile` wrapper (every
    key starts with `module.` or `_orig_mod.`), `load_state_dict` calls whose missing and unexpected keys differ
    only by such a prefix (including `strict=False` loads that silently load nothing), and whole training
    checkpoints (`{"model": ..., "optimizer": ..., "epoch": ...}`) passed to `load_state_dict` as if they were
    a state_dict.

    At run time it reads the keys of every `torch.save` payload and of every `load_state_dict` call; from the
    source it finds `torch.save(x.state_dict(), ...)` where `x` is a wrapper and `load_state_dict(...,
    strict=False)` calls whose result is thrown away.

    ## Why is this bad?
    A wrapper's state_dict names every tensor after the wrapper: `module.fc.weight` instead of `fc.weight`.
    The checkpoint then loads only into the same wrapper. Loading it into the plain model for evaluation or
    inference raises on missing and unexpected keys, and with `strict=False` it loads *nothing* and says
    nothing: the model keeps its random initial weights and the evaluation looks like training failed.

    ## Example
    ```python
    model = DDP(Net())
    ...
    torch.save(model.state_dict(), "ckpt.pt")   # keys: module.fc.weight, ...

    net = Net()
    net.load_state_dict(torch.load("ckpt.pt"), strict=False)   # loads 0 tensors
    ```

    ## Use instead
    ```python
    model = DDP(Net())
    ...
    torch.save(model.module.state_dict(), "ckpt.pt")   # keys: fc.weight, ...

    net = Net()
    net.load_state_dict(torch.load("ckpt.pt"))
    ```

    ## Fix
    Save the module inside the wrapper: `model.module.state_dict()` for DDP and DataParallel,
    `model._orig_mod.state_dict()` for `torch.compile`. Load checkpoints with `strict=True` (the default), or
    check what `load_state_dict(..., strict=False)` returns. Repair checkpoints already written with
    `convcheck fix-state-dict CKPT --output FIXED`, which strips the prefixes in place of the keys and verifies
    the result. A wrapper saved and loaded back into the same wrapper is consistent and is not reported.

    Severities: a load that failed on a prefix, and a checkpoint of `torch.compile`'s wrapper
    (`_orig_mod.` keys), are errors: whether a model is compiled is a speed setting that evaluation,
    inference and export code rarely repeat, so such a checkpoint fails wherever it is used next. A
    `module.` checkpoint (DDP, DataParallel) is a warning, because resuming it into the same wrapper
    is a common, correct pattern; loaded back into the same wrapper in the run, either is info.

    ## Known limits
    Only checkpoints written with `torch.save` (the run) or a `*.state_dict()` save in the script (the source)
    are read: `safetensors`, `save_pretrained` and framework checkpoint callbacks are not. Prefixes other than
    `module.` and `_orig_mod.` (a custom wrapper's own attribute name) are not recognised. A checkpoint that
    the run never saves or loads is judged from the source alone.
    """

    code = "CC001"
    name = "state-dict-prefix"
    severity = Severity.ERROR
    summary = "Checkpoints saved from a DDP/DataParallel/torch.compile wrapper; loads that mismatch only by a prefix."

    _pending: list[Finding]

    # -- static ------------------------------------------------------------------------------

    def check_static(self, ctx: StaticContext) -> Iterable[Finding]:
        found = list(self._static(ctx))
        return self.defer_static(found)

    def _static(self, ctx: StaticContext) -> Iterable[Finding]:
        flow = Flow(ctx)
        wrapped_loads = self._wrapped_load_targets(ctx, flow)
        for call in ctx.calls():
            name = resolved_call(call, flow.aliases) or ""
            if name in ("torch.save", "torch.serialization.save") and call.args:
                yield from self._static_save(call, ctx, flow, wrapped_loads)
        for node in ast.walk(ctx.tree):
            if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)):
                continue
            call = node.value
            if isinstance(call.func, ast.Attribute) and call.func.attr == "load_state_dict":
                if is_false(keyword(call, "strict")) or (len(call.args) > 1 and is_false(call.args[1])):
                    yield self.finding(
                        "load_state_dict(..., strict=False) discards its result: if the keys do not match (a "
                        "`module.` prefix, a nested checkpoint), nothing loads and nothing says so.",
                        fix="Keep the result and check it: `result = model.load_state_dict(sd, strict=False)`, then "
                        "fail if `result.missing_keys` holds keys you meant to load; or load with strict=True.",
                        location=(ctx.display_path, call.lineno), severity=Severity.WARNING, source="static",
                        evidence={"strict": False, "result_used": False},
                    )

    def _wrapped_load_targets(self, ctx: StaticContext, flow: Flow) -> set[str]:
        """Variables that are wrappers at a ``load_state_dict`` call: a wrapper saved and loaded back."""
        found = set()
        for call in ctx.calls():
            if isinstance(call.func, ast.Attribute) and call.func.attr == "load_state_dict":
                target = dotted_name(call.func.value)
                if target and _wrapper_at(target, call.lineno, flow):
                    found.add(target)
        return found

    def _static_save(self, call: ast.Call, ctx: StaticContext, flow: Flow, wrapped_loads: set[str]) -> Iterable[Finding]:
        for sub in ast.walk(call.args[0]):
            if not (isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute) and sub.func.attr == "state_dict"):
                continue
            target = dotted_name(sub.func.value)
            if not target:
                continue
            wrapper = _wrapper_at(target, call.lineno, flow)
            if wrapper is None:
                continue
            prefix = _WRAPPERS[wrapper]
            path = call.args[1] if len(call.args) > 1 else keyword(call, "f")
            shown_path = path.value if isinstance(path, ast.Constant) and isinstance(path.value, str) else None
            consistent = target in wrapped_loads
            message = (
                f"torch.save stores `{target}.state_dict()`, and `{target}` is a {wrapper} wrapper here: every key "
                f"will start with '{prefix}', so the checkpoint loads only into the same wrapper."
            )
            if consistent:
                message += " This script loads it back into the wrapper, which is consistent."
            yield self.finding(
                message, fix=_save_fix(prefix, shown_path).replace("model.", f"{target}.", 1),
                location=(ctx.display_path, call.lineno),
                severity=Severity.INFO if consistent else Severity.WARNING, source="static",
                evidence={"saved": f"{target}.state_dict()", "wrapper": wrapper, "prefix": prefix},
            )
            return

    # -- runtime -----------------------------------------------------------------------------

    def check_runtime(self, run: RunTrace, ctx: StaticContext) -> Iterable[Finding]:
        pending = list(getattr(self, "_pending", []))
        self._pending = []
        procs = run.trainers or run.processes
        runtime: list[Finding] = []
        loads = [(proc, load, finding) for proc in procs for load, finding in self._loads(proc, ctx)]
        # Checkpoints that this run failed to load because of a prefix: their saves are proven wrong.
        failed = {_path(load) for _, load, f in loads if f is not None and "prefix" in f.evidence} - {None}
        for proc in procs:
            # Every rank may save or load at the same line: one finding per line.
            found = [f for p, _, f in loads if p is proc and f is not None]
            for finding in [*self._saves(proc, ctx, failed), *found]:
                if not any(f.location == finding.location for f in runtime):
                    runtime.append(finding)
        merged = []
        for finding in runtime:
            twin = next((p for p in pending if p.location == finding.location), None)
            if twin is not None:
                pending.remove(twin)
                severity = finding.severity
                if twin.severity == Severity.INFO and finding.severity.rank > Severity.INFO.rank:
                    severity = Severity.INFO  # the source shows the wrapper is loaded back consistently
                finding = finding.model_copy(update={"source": "static+runtime", "severity": severity})
            merged.append(finding)
        # A strict=False load that loaded everything in this run: the ignored result is advice, not a bug seen.
        clean_loads = {
            user_location(e.get("loc"), ctx)
            for p in procs for e in p.of("load_state_dict") if not e.get("n_missing") and not e.get("n_unexpected")
        }
        # Saves the source suspected that wrote plain keys while a wrapper was in use: the source was wrong.
        plain_saves = {
            user_location(e.get("loc"), ctx)
            for p in procs if any(m.get("wrapper") for m in p.of("model"))
            for e in p.of("save")
            if e.get("state_dicts") and not any(common_wrapper_prefix(sd.get("keys") or []) for sd in e["state_dicts"])
        }
        for twin in pending:
            loc = (twin.location.path, twin.location.line) if twin.location else None
            if "wrapper" in twin.evidence and loc in plain_saves:
                continue
            if twin.evidence.get("strict") is False and loc in clean_loads:
                twin = twin.model_copy(update={
                    "severity": Severity.INFO, "source": "static+runtime",
                    "message": twin.message + " In this run every key matched.",
                })
            merged.append(twin)
        return merged

    def _saves(self, proc: ProcessTrace, ctx: StaticContext, failed_loads: set[str]) -> Iterable[Finding]:
        loaded_back = _consistent_reloads(proc)
        for event in proc.of("save"):
            for sd in event.get("state_dicts") or []:
                keys = sd.get("keys") or []
                prefix = common_wrapper_prefix(keys)
                if not prefix:
                    continue
                where = "the payload" if not sd.get("path") else "payload" + "".join(f"[{k!r}]" for k in sd["path"])
                path = event.get("path")
                consistent = path is not None and path in loaded_back
                message = (
                    f"torch.save wrote {where} with all {sd.get('n_keys', len(keys))} keys starting with '{prefix}' "
                    f"(taken from a {_wrapper_names(prefix)} wrapper), e.g. '{keys[0]}': it loads only into the same "
                    "wrapper, and into the plain model with missing and unexpected keys."
                )
                # A `module.` checkpoint resumed into DDP is a common, correct pattern: a warning. `_orig_mod.` keys
                # tie the checkpoint to an optimisation flag that inference and evaluation code rarely set.
                severity = Severity.INFO if consistent else (
                    Severity.ERROR if "_orig_mod." in prefix else Severity.WARNING)
                if path is not None and path in failed_loads:
                    message += " This run loaded it into a plain model and the keys did not match."
                    severity = Severity.ERROR
                elif consistent and loaded_back[path] == "stripped":
                    message += (" This run loaded it back after removing the prefix itself before load_state_dict, "
                                "so its own resume works; code that loads the file into the plain model as it is "
                                "will not.")
                elif consistent:
                    message += " This run loaded it back into the same wrapper, which is consistent."
                yield self.finding(
                    message, fix=_save_fix(prefix, path), location=user_location(event.get("loc"), ctx),
                    severity=severity,
                    evidence={"path": path, "in_payload": sd.get("path") or [], "prefix": prefix,
                              "n_keys": sd.get("n_keys"), "example_keys": keys[:3], "step": event.get("step")},
                )
                break

    def _loads(self, proc: ProcessTrace, ctx: StaticContext) -> Iterable[tuple[Event | None, Finding | None]]:
        """Each load_state_dict's judgement, with the torch.load that came before it."""
        last_load: Event | None = None
        for event in proc.events:
            if event["ev"] == "load":
                last_load = event
            elif event["ev"] == "load_state_dict":
                yield last_load, self._judge_load(event, last_load, ctx)

    def _judge_load(self, event: Event, last_load: Event | None, ctx: StaticContext) -> Finding | None:
        missing = [str(k) for k in event.get("missing") or []]
        unexpected = [str(k) for k in event.get("unexpected") or []]
        n_missing, n_unexpected = event.get("n_missing", len(missing)), event.get("n_unexpected", len(unexpected))
        n_loaded, n_expected = event.get("n_loaded", 0), event.get("n_expected", 0)
        strict = event.get("strict", True)
        where = user_location(event.get("loc"), ctx)
        module = event.get("module", "the model")
        outcome = (
            f"with strict=False it loaded {n_loaded} of {n_expected} tensors, the other {n_expected - n_loaded} kept "
            "their initial values, and no error was raised"
            if not strict else "with strict=True this raises a RuntimeError"
        )
        evidence = {"strict": strict, "n_loaded": n_loaded, "n_expected": n_expected, "n_missing": n_missing,
                    "n_unexpected": n_unexpected, "missing_examples": missing[:3], "unexpected_examples": unexpected[:3]}
        if not n_missing and not n_unexpected:
            return None
        stripped_u = {strip_leading(k, WRAPPER_PREFIXES) for k in unexpected}
        stripped_m = {strip_leading(k, WRAPPER_PREFIXES) for k in missing}
        matched = len(stripped_u & stripped_m)
        if missing and unexpected and matched and matched * 2 >= min(len(stripped_u), len(stripped_m)):
            saved_wrapped = common_wrapper_prefix(unexpected) is not None or any(
                k != strip_leading(k, WRAPPER_PREFIXES) for k in unexpected)
            prefix = _leading_prefix(unexpected if saved_wrapped else missing)
            if saved_wrapped:
                story = f"the checkpoint was saved from a wrapper and its keys start with '{prefix}'; {module}'s do not"
                fix = (f"Strip the prefix from the checkpoint once: `{_fix_command(_path(last_load))}`; save "
                       f"`model.module.state_dict()` from now on. Until then: "
                       f"`torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(sd, '{prefix}')` before loading.")
            else:
                story = f"{module} is a wrapper whose keys start with '{prefix}'; the checkpoint's do not"
                fix = "Load into the module inside the wrapper: `model.module.load_state_dict(sd)`, or load before wrapping."
            evidence["prefix"] = prefix
            message = (
                f"load_state_dict: {n_missing} missing and {n_unexpected} unexpected keys differ only by the prefix "
                f"'{prefix}': {story}. {outcome[0].upper()}{outcome[1:]}."
            )
            return self.finding(message, fix=fix, location=where, evidence=evidence, severity=Severity.ERROR)
        nested = [k for k in unexpected if "." not in k and k in _CHECKPOINT_KEYS]
        if nested and n_loaded == 0:
            inner = _inner_state_dict(last_load)
            hint = f"`model.load_state_dict(checkpoint[{inner!r}])`" if inner else \
                "the model's entry of the checkpoint, e.g. `model.load_state_dict(checkpoint['model'])`"
            message = (
                f"load_state_dict was given a whole training checkpoint (keys {', '.join(repr(k) for k in nested[:4])}), "
                f"not a state_dict; {outcome}."
            )
            evidence["checkpoint_keys"] = nested[:8]
            fix = f"Pass {hint}."
            inner_prefix = _inner_prefix(last_load)
            if inner_prefix:
                message += f" The state_dict inside it has keys starting with '{inner_prefix}' as well."
                fix += (f" Its keys also carry the wrapper prefix '{inner_prefix}': strip it once with "
                        f"`{_fix_command(_path(last_load))}`.")
                evidence["inner_prefix"] = inner_prefix
            return self.finding(message, fix=fix, location=where, evidence=evidence, severity=Severity.ERROR)
        if not strict and n_expected and n_loaded == 0:
            message = (
                f"load_state_dict(strict=False) loaded 0 of {n_expected} tensors: none of the {n_unexpected} given keys "
                f"match {module}'s (e.g. '{unexpected[0] if unexpected else '?'}' vs "
                f"'{missing[0] if missing else '?'}'); the model keeps its initial weights."
            )
            return self.finding(message, fix="Load with strict=True to see the mismatch, and rename the checkpoint's "
                                "keys to the model's.", location=where, evidence=evidence, severity=Severity.ERROR)
        return None


def _wrapper_at(name: str, line: int, flow: Flow, depth: int = 0) -> str | None:
    """Which wrapper ``name`` holds at ``line`` (``DistributedDataParallel``, ``DataParallel``, ``compile``), if any."""
    if depth > 5 or last_segment(name) in ("module", "_orig_mod"):
        return None
    values = flow.values_of(name, before=line)
    if not values:
        return None
    _, value = max(values, key=lambda item: item[0])
    if isinstance(value, ast.Call):
        called = resolved_call(value, flow.aliases) or ""
        short = last_segment(called)
        if short in ("DistributedDataParallel", "DataParallel") or called in ("torch.compile",):
            return short
        return None
    inner = dotted_name(value)
    if inner and inner != name:
        return _wrapper_at(inner, line, flow, depth + 1)
    return None


def _leading_prefix(keys: list[str]) -> str:
    prefix = common_wrapper_prefix(keys)
    if prefix:
        return prefix
    for key in keys:
        for candidate in WRAPPER_PREFIXES:
            if key.startswith(candidate):
                return candidate
    return WRAPPER_PREFIXES[0]


_WRAPPER_CLASSES = frozenset({"DistributedDataParallel", "DataParallel", "OptimizedModule",
                              "FullyShardedDataParallel"})


def _consistent_reloads(proc: ProcessTrace) -> dict[str, str]:
    """Paths this process loaded and then fed to a load_state_dict where every key matched, and how:
    "wrapper" when it loaded into the same kind of wrapper, "stripped" when the script removed the prefix."""
    found: dict[str, str] = {}
    last: Event | None = None
    for event in proc.events:
        if event["ev"] == "load":
            last = event
        elif event["ev"] == "load_state_dict" and last is not None and last.get("path"):
            if not event.get("n_missing") and not event.get("n_unexpected") and event.get("n_loaded"):
                wrapped = event.get("module") in _WRAPPER_CLASSES
                found[last["path"]] = "wrapper" if wrapped else "stripped"
    return found


def _path(load: Event | None) -> str | None:
    return load.get("path") if load else None


def _inner_prefix(load: Event | None) -> str | None:
    for sd in (load or {}).get("state_dicts") or []:
        prefix = common_wrapper_prefix(sd.get("keys") or [])
        if prefix:
            return prefix
    return None


def _inner_state_dict(load: Event | None) -> str | None:
    if not load:
        return None
    for sd in load.get("state_dicts") or []:
        if sd.get("path"):
            return str(sd["path"][0])
    return None
