"""CC016 unregistered-submodule: layers a model calls but keeps in a plain list, dict or tuple, so that it does not
own their parameters."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from convcheck.checks.cc006_frozen_parameters import ParamTable
from convcheck.findings import Finding, Severity
from convcheck.paths import display_loc
from convcheck.registry import Check
from convcheck.runtime.trace import Event, ProcessTrace, RunTrace
from convcheck.statedict.key_plans import common_wrapper_prefix
from convcheck.static.context import StaticContext, dotted_name
from convcheck.static.flow import import_aliases, last_segment, resolve, user_location

_FIX = (
    "Hold layers in `nn.ModuleList` / `nn.ModuleDict` (or assign each to an attribute), never in a plain list, "
    "dict or tuple: then model.parameters(), the optimizer, state_dict(), .to(device) and DDP all see them."
)

#: torch.nn classes that own parameters (by default): a plain list of these loses weights. A list of activations,
#: dropout or pooling layers owns nothing and is harmless.
_LAYERS_WITH_PARAMETERS = frozenset({
    "Linear", "Bilinear", "LazyLinear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d",
    "ConvTranspose3d", "LazyConv1d", "LazyConv2d", "LazyConv3d", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
    "LayerNorm", "GroupNorm", "RMSNorm", "Embedding", "EmbeddingBag", "RNN", "LSTM", "GRU", "RNNCell", "LSTMCell",
    "GRUCell", "MultiheadAttention", "Transformer", "TransformerEncoder", "TransformerDecoder",
    "TransformerEncoderLayer", "TransformerDecoderLayer", "PReLU", "Sequential", "ModuleList", "ModuleDict",
})
#: Calls that register what they are given as submodules (or hold it in a registered container).
_REGISTERING = frozenset({"ModuleList", "ModuleDict", "Sequential", "ParameterList", "ParameterDict", "add_module",
                          "register_module", "setattr"})
#: Methods that return the same module (``nn.Linear(4, 4).to(device)``).
_SAME_MODULE = frozenset({"to", "cuda", "cpu", "float", "double", "half", "bfloat16", "train"})
_MODULE_BASES = frozenset({"Module", "LightningModule", "PreTrainedModel"})


class UnregisteredSubmodule(Check):
    """## What it does
    Finds layers that a model calls in `forward()` but keeps in a plain Python `list`, `dict` or `tuple`
    attribute instead of `nn.ModuleList`/`nn.ModuleDict`. Such layers are not submodules: the model does
    not own their parameters. The run sees it in the first forwards (a layer called inside the model whose
    parameters the model does not own); the source shows it in a module class that assigns a list, dict,
    tuple or comprehension of layers (`nn.Linear(...)`, a module class of the script) to `self.x`, or fills
    `self.x = []` with `append`, and iterates or indexes `self.x` in another method. When the run saved
    the model's `state_dict()`, the finding says how many keys the checkpoint holds without those layers.

    Severities:
    - error: the layers' trainable parameters are in no optimizer, so they never train; or the optimizer
      holds them (added by hand) but a checkpoint of the model saved in the run lacks them.
    - warning: the script added their parameters to the optimizer by hand, so they train, but
      `state_dict()`, `.to(device)` and DDP still miss them; or the source alone shows it (the run did not
      reach that model, or `--static-only`).

    Frozen layers kept out of the model on purpose (a teacher hidden from `state_dict()`) are not reported,
    nor are containers also registered elsewhere (`self.blocks = list(self.layers)` of an `nn.ModuleList`,
    or a list later wrapped in `nn.ModuleList`), nor lists of layers without parameters (activations).

    ## Why is this bad?
    `model.parameters()` walks submodules only: an optimizer built from it never updates the layers in the
    list, and the loss plateaus at whatever the registered part can do. Even when their parameters are
    added by hand, `model.to(device)` leaves them on the CPU, DDP does not average their gradients across
    ranks, and `torch.save(model.state_dict())` writes a checkpoint without them (empty when every layer
    is in the list): the trained weights are lost.

    ## Example
    ```python
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = [nn.Linear(64, 64) for _ in range(4)]  # a plain list
        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x
    ```

    ## Use instead
    ```python
            self.layers = nn.ModuleList(nn.Linear(64, 64) for _ in range(4))
    ```

    ## Fix
    Wrap the list in `nn.ModuleList` (a dict in `nn.ModuleDict`, a pipeline in `nn.Sequential`). Checkpoints
    saved before the fix do not hold those layers and cannot be recovered from.

    ## Known limits
    The run checks the layers called in the first three forwards of each model; a layer used only later
    (one branch) is seen only from the source. From the source, the container must be assigned in a module
    class of the script and used in another of its methods; containers built in other modules, or filled
    through helper functions, are not followed. A model whose `forward` is called directly is not seen at
    run time.
    """

    code = "CC016"
    name = "unregistered-submodule"
    severity = Severity.ERROR
    summary = "Layers kept in a plain list/dict/tuple: missing from parameters(), the optimizer and state_dict()."

    _pending: list[Finding]

    # -- static ------------------------------------------------------------------------------

    def check_static(self, ctx: StaticContext) -> Iterable[Finding]:
        found = [self._static_finding(site, ctx) for site in plain_layer_containers(ctx)]
        return self.defer_static(found)

    def _static_finding(self, site: PlainLayers, ctx: StaticContext) -> Finding:
        kinds = _list_names(sorted(set(site.layers)))
        message = (f"`{site.cls}.{site.attr}` is a plain {site.kind} of layers ({kinds}) that "
                   f"{site.cls}.{site.used_in} "
                   f"uses: they are not submodules, so {site.cls}.parameters(), the optimizer, state_dict(), "
                   ".to(device) and DDP miss them (from the source).")
        return self.finding(message, fix=_FIX, location=(ctx.display_path, site.line), severity=Severity.WARNING,
                            source="static", headline="attribute",
                            evidence={"class": site.cls, "attribute": site.attr, "container": site.kind,
                                      "layers": site.layers[:20], "used_in": site.used_in,
                                      "has_forward": site.has_forward, "evidence": "from the source"})

    # -- runtime -----------------------------------------------------------------------------

    def check_runtime(self, run: RunTrace, ctx: StaticContext) -> Iterable[Finding]:
        pending, self._pending = list(getattr(self, "_pending", [])), []
        proc = next(iter(run.trainers), None)
        if proc is None:
            return pending
        table = ParamTable.from_trace(proc)
        findings = []
        roots: dict[Any, list[Event]] = {}
        for layer in table.unregistered:
            roots.setdefault(layer.get("root"), []).append(layer)
        for root, layers in roots.items():
            twin = _take_twin(pending, layers)
            findings.append(self._runtime_finding(proc, table, root, layers, twin, ctx))
        # The run trained and checked every layer its models called: what the source suspected did not happen
        # (the layers were frozen, registered another way, or never called). A class with no forward of its own
        # (its methods call the layers one by one) is out of the run's sight: its finding stands.
        if proc.steps:
            pending = [f for f in pending if f.evidence.get("has_forward") is False]
        return [*findings, *pending]

    def _runtime_finding(self, proc: ProcessTrace, table: ParamTable, root: Any, layers: list[Event],
                         twin: Finding | None, ctx: StaticContext) -> Finding:
        """One finding per model: an error when the layers never train or a saved checkpoint lacks them."""
        ids = [p["id"] for u in layers for p in u.get("params", [])]
        trainable = [p for p in ids if p not in table.frozen]
        idle = [p for p in trainable if p not in table.optimized_set]
        named = [u.get("container") or f"a {u.get('cls')}" for u in layers]
        holders = sorted({u.get("holder") for u in layers if u.get("holder")})
        where = f" kept in {', '.join(holders)}" if holders else ""
        model = layers[0].get("root_cls") or "the model"
        listed = _list_names(named[:5]) + (f" and {len(named) - 5} more" if len(named) > 5 else "")
        listed = ("module " if len(named) == 1 else "modules ") + listed
        saves = _saves_of(proc, root)
        evidence: dict[str, Any] = {
            "layers": [{"name": u.get("container"), "cls": u.get("cls"), "holder": u.get("holder")}
                       for u in layers][:20],
            "parameters": len(ids), "not_in_optimizer": [table.names.get(p, f"param{p}") for p in idle][:20],
            "called_at": display_loc(user_location(layers[0].get("loc"), ctx)),
        }
        if twin is not None:
            evidence["source_line"] = twin.location.line if twin.location else None
        if idle:
            got = [p for p in idle if p in table.outside_grad]
            message = (f"{model}.forward calls {listed}{where}, a plain Python container, so "
                       f"{'it is' if len(layers) == 1 else 'they are'} not registered as submodules: "
                       f"{len(idle)} parameters are missing from {model}.parameters() and so from the optimizer"
                       f"{' — they receive gradients that are never applied' if got else ' — they never train'}; "
                       "state_dict(), .to(device) and DDP miss them too.")
            severity, headline = Severity.ERROR, "not_in_optimizer"
        else:
            message = (f"{model}.forward calls {listed}{where}, a plain Python container: the optimizer holds "
                       f"{'its' if len(layers) == 1 else 'their'} {len(trainable)} parameters (added by hand), "
                       f"but {model}.state_dict() does not save them, .to(device) does not move them and DDP does "
                       "not synchronize them.")
            severity, headline = Severity.WARNING, "parameters"
        if saves:
            save, summary = saves[0]
            n_keys = summary.get("n_keys", 0)
            message += (f" torch.save at {display_loc(user_location(save.get('loc'), ctx))} saved {n_keys} "
                        f"key{'' if n_keys == 1 else 's'} of {model}.state_dict(), none of them from these layers "
                        f"({len(ids)} parameters): the checkpoint lacks them.")
            evidence["saved"] = [{"path": s.get("path"), "n_keys": sd.get("n_keys"), "step": s.get("step")}
                                 for s, sd in saves][:5]
            severity, headline = Severity.ERROR, "saved"
        if twin is not None and twin.location is not None:
            location: Any = twin.location
        else:
            location = user_location(layers[0].get("loc"), ctx) or layers[0].get("loc")
        return self.finding(message, fix=_FIX, location=location, severity=severity, evidence=evidence,
                            source="static+runtime" if twin is not None else "runtime", headline=headline)


def _take_twin(pending: list[Finding], layers: list[Event]) -> Finding | None:
    """The static finding about the same container (``Net.hidden``) as the run's layers, taken out of ``pending``."""
    held = {str(u.get("holder") or "").split(" ")[0] for u in layers}
    for finding in pending:
        if f"{finding.evidence.get('class')}.{finding.evidence.get('attribute')}" in held:
            pending.remove(finding)
            return finding
    return None


def _saves_of(proc: ProcessTrace, root: Any) -> list[tuple[Event, dict[str, Any]]]:
    """The run's torch.save calls that wrote the state_dict of model ``root`` (None: a model that owns nothing)."""
    models = proc.of("model")
    owned = set()
    if isinstance(root, int) and 0 <= root < len(models):
        owned = {p["name"] for p in models[root].get("params", [])}
    found = []
    for event in proc.of("save"):
        for summary in event.get("state_dicts") or []:
            keys = list(summary.get("keys") or [])
            prefix = common_wrapper_prefix(keys) or ""
            keys = {k[len(prefix):] for k in keys}
            if not owned:
                mine = summary.get("n_keys") == 0
            else:
                # Every parameter the model owns is in it (buffers come along): the model's own state_dict.
                mine = summary.get("n_keys") == len(summary.get("keys") or []) and owned <= keys
            if mine:
                found.append((event, summary))
    return found


def _list_names(names: list[str]) -> str:
    quoted = [f"`{n}`" for n in names[:4]]
    return ", ".join(quoted) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


# -- static analysis ----------------------------------------------------------------------------


@dataclass
class PlainLayers:
    """A module class's attribute that holds layers in a plain container, and a method that uses it."""

    cls: str
    attr: str
    line: int
    kind: str
    layers: list[str] = field(default_factory=list)
    used_in: str = "forward"
    #: Whether the class defines forward: the run sees only layers called inside a model's forward.
    has_forward: bool = True


def plain_layer_containers(ctx: StaticContext) -> list[PlainLayers]:
    """``self.x = [nn.Linear(...), ...]`` (or a dict, tuple, comprehension, or ``[]`` filled by ``append``) in a
    module class of the script, where another method of the class iterates or indexes ``self.x``."""
    aliases = import_aliases(ctx.tree)
    classes = _module_classes(ctx.tree, aliases)
    found = []
    for node in ast.walk(ctx.tree):
        if isinstance(node, ast.ClassDef) and node.name in classes:
            found += _in_class(node, aliases, classes)
    return sorted(found, key=lambda s: s.line)


def _module_classes(tree: ast.AST, aliases: dict[str, str]) -> dict[str, ast.ClassDef]:
    """Classes of the script that derive from nn.Module, directly, through a torch.nn class or another of them."""
    defs = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
    found: dict[str, ast.ClassDef] = {}
    changed = True
    while changed:
        changed = False
        for node in defs:
            if node.name in found:
                continue
            for base in node.bases:
                name = resolve(dotted_name(base), aliases) or ""
                if (name in found or last_segment(name) in _MODULE_BASES
                        or (name.startswith("torch.nn.") and last_segment(name)[:1].isupper())):
                    found[node.name] = node
                    changed = True
                    break
    return found


def _layer_name(expr: ast.AST, aliases: dict[str, str], classes: dict[str, ast.ClassDef]) -> str | None:
    """``nn.Linear`` for a call that builds a layer owning parameters (a torch.nn layer or a module class of the
    script, ``.to(device)`` allowed), else None."""
    while (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute)
           and expr.func.attr in _SAME_MODULE and isinstance(expr.func.value, ast.Call)):
        expr = expr.func.value
    if not isinstance(expr, ast.Call):
        return None
    written = dotted_name(expr.func)
    name = resolve(written, aliases) or ""
    if name.startswith("torch.nn.") and last_segment(name) in _LAYERS_WITH_PARAMETERS:
        return written
    if written in classes:
        return written
    return None


def _is_self_attr(node: ast.AST, attr: str | None = None) -> bool:
    return (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
            and (attr is None or node.attr == attr))


@dataclass
class _Container:
    kind: str
    layers: list[str]


def _container(expr: ast.AST, aliases: dict[str, str], classes: dict[str, ast.ClassDef]) -> _Container | None:
    """The plain container an expression builds, with the layers it holds (none yet for ``[]``); None otherwise."""
    def layer(e: ast.AST) -> str | None:
        return _layer_name(e, aliases, classes)

    if isinstance(expr, (ast.List, ast.Tuple)):
        kind = "list" if isinstance(expr, ast.List) else "tuple"
        return _Container(kind, [n for e in expr.elts if (n := layer(e))])
    if isinstance(expr, ast.ListComp):
        return _Container("list", [n] if (n := layer(expr.elt)) else [])
    if isinstance(expr, ast.Dict):
        return _Container("dict", [n for e in expr.values if (n := layer(e))])
    if isinstance(expr, ast.DictComp):
        return _Container("dict", [n] if (n := layer(expr.value)) else [])
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Mult):
        for side in (expr.left, expr.right):
            if isinstance(side, ast.List):
                return _container(side, aliases, classes)
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id in ("list", "tuple", "dict"):
        if not expr.args and not expr.keywords:
            return _Container(expr.func.id, [])
        if len(expr.args) == 1 and isinstance(expr.args[0], (ast.GeneratorExp, ast.ListComp)):
            return _Container(expr.func.id, [n] if (n := layer(expr.args[0].elt)) else [])
    return None


def _filled(method: ast.AST, is_target: Any, aliases: dict[str, str], classes: dict[str, ast.ClassDef]) -> list[str]:
    """Layers added to a container by ``x.append(layer)``, ``x.extend([...])``, ``x[k] = layer`` or ``x += [...]``."""
    found: list[str] = []
    for node in ast.walk(method):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and is_target(node.func.value)
                and node.func.attr in ("append", "insert", "extend", "add")):
            for arg in node.args:
                if (name := _layer_name(arg, aliases, classes)) is not None:
                    found.append(name)
                elif (inner := _container(arg, aliases, classes)) is not None:
                    found += inner.layers
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Subscript) and is_target(t.value)
                                                  for t in node.targets):
            if (name := _layer_name(node.value, aliases, classes)) is not None:
                found.append(name)
        elif isinstance(node, ast.AugAssign) and is_target(node.target):
            if (inner := _container(node.value, aliases, classes)) is not None:
                found += inner.layers
    return found


def _in_class(cls: ast.ClassDef, aliases: dict[str, str], classes: dict[str, ast.ClassDef]) -> list[PlainLayers]:
    methods = [n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    # Any registering call by name (setattr(self, ...), add_module) may register the layers one by one: quiet.
    registering = [n for m in methods for n in ast.walk(m) if isinstance(n, ast.Call)
                   and last_segment(resolve(dotted_name(n.func), aliases)) in _REGISTERING]
    if any(last_segment(dotted_name(c.func)) in ("add_module", "register_module", "setattr") for c in registering):
        return []
    # Names and self attributes handed to nn.ModuleList/Sequential/...: their layers are registered there.
    registered = {ast.unparse(n) for c in registering for a in [*c.args, *(k.value for k in c.keywords)]
                  for n in ast.walk(a) if isinstance(n, ast.Name) or _is_self_attr(n)}
    assigned: dict[str, list[tuple[ast.AST, ast.AST]]] = {}
    for method in methods:
        for node in ast.walk(method):
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if _is_self_attr(target):
                        assigned.setdefault(target.attr, []).append((node, method))
    found = []
    has_forward = any(getattr(m, "name", "") == "forward" for m in methods)
    for attr, places in assigned.items():
        # `self.x = self.x + [layer]` fills the container; any other second assignment replaces it.
        grown = [n for n, _ in places if isinstance(n.value, ast.BinOp) and isinstance(n.value.op, ast.Add)
                 and _is_self_attr(n.value.left, attr)]
        places = [(n, m) for n, m in places if n not in grown]
        if len(places) != 1 or f"self.{attr}" in registered:
            continue  # reassigned (wrapped in nn.ModuleList later) or handed to a registering container
        node, method = places[0]
        container = _container(node.value, aliases, classes)
        layers: list[str] = [name for n in grown if (inner := _container(n.value.right, aliases, classes))
                             for name in inner.layers]
        if container is None and isinstance(node.value, ast.Name):
            # layers = [...]; self.layers = layers: the local's own value, and what was appended to it.
            local = node.value.id
            if local in registered:
                continue
            values = [n.value for n in ast.walk(method) if isinstance(n, ast.Assign)
                      and any(isinstance(t, ast.Name) and t.id == local for t in n.targets)]
            if len(values) != 1:
                continue
            container = _container(values[0], aliases, classes)
            if container is not None:
                layers += _filled(method, lambda e, n=local: isinstance(e, ast.Name) and e.id == n, aliases, classes)
        if container is None:
            continue
        layers = container.layers + layers + [name for m in methods for name in _filled(
            m, lambda e, a=attr: _is_self_attr(e, a), aliases, classes)]
        used = _used_in(methods, attr, method)
        if layers and used:
            found.append(PlainLayers(cls.name, attr, node.lineno, container.kind, layers, used, has_forward))
    return found


def _used_in(methods: list[ast.AST], attr: str, building: ast.AST) -> str | None:
    """The first method (forward first) other than the one that builds ``self.attr`` that iterates or indexes it."""
    ordered = sorted((m for m in methods if m is not building), key=lambda m: getattr(m, "name", "") != "forward")
    for method in ordered:
        for node in ast.walk(method):
            if isinstance(node, ast.Subscript) and _is_self_attr(node.value, attr):
                return getattr(method, "name", "forward")
            iters = [node.iter] if isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)) else []
            if any(_is_self_attr(n, attr) for it in iters for n in ast.walk(it)):
                return getattr(method, "name", "forward")
    return None
