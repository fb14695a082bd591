"""CC010 softmax-before-cross-entropy: probabilities fed to a loss that expects logits (or log-probabilities)."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from convcheck.findings import Finding, Severity
from convcheck.registry import Check
from convcheck.runtime.trace import Event, RunTrace
from convcheck.static.context import StaticContext, call_name, dotted_name

#: Nodes that reshape or copy without changing values: looked through between the loss and its input.
_THROUGH = frozenset({
    "ViewBackward0", "ReshapeAliasBackward0", "UnsafeViewBackward0", "SqueezeBackward0", "SqueezeBackward1",
    "SqueezeBackward2", "UnsqueezeBackward0", "PermuteBackward0", "TransposeBackward0", "TransposeBackward1",
    "CloneBackward0", "ToCopyBackward0", "SelectBackward0", "SliceBackward0", "ExpandBackward0",
    "ViewAsRealBackward0", "FlattenBackward0", "IndexBackward0",
})
_NLL = frozenset({"NllLossBackward0", "NllLoss2DBackward0"})
_BCE_LOGITS = "BinaryCrossEntropyWithLogitsBackward0"

_FIX_SOFTMAX = (
    "Pass the raw scores (logits) to `CrossEntropyLoss`/`F.cross_entropy`: it applies log_softmax itself. "
    "Remove the softmax from the model's output (apply `softmax` only where probabilities are needed, e.g. "
    "for metrics or at inference)."
)
_FIX_SIGMOID = (
    "Pass the raw scores (logits) to `BCEWithLogitsLoss`/`F.binary_cross_entropy_with_logits`: it applies "
    "the sigmoid itself, in a numerically stable way. Remove the sigmoid before the loss."
)
_FIX_NLL_PROBS = (
    "`NLLLoss` expects log-probabilities: use `log_softmax` instead of `softmax`, or pass the logits to "
    "`CrossEntropyLoss`."
)
_FIX_LOG_SOFTMAX = (
    "Use `NLLLoss` on log-probabilities, or `CrossEntropyLoss` on logits; not `CrossEntropyLoss` on the output "
    "of `log_softmax`."
)

#: (what the run saw, the input's autograd node, user-facing function names for the static search).
_KINDS = {
    "softmax": ("SoftmaxBackward0", ("softmax", "Softmax")),
    "log_softmax": ("LogSoftmaxBackward0", ("log_softmax", "LogSoftmax")),
    "sigmoid": ("SigmoidBackward0", ("sigmoid", "Sigmoid")),
}


@dataclass
class Observation:
    """One loss fed the output of a normalizing function."""

    loss: str  # cross_entropy | nll_loss | bce_with_logits
    fed: str  # softmax | log_softmax | sigmoid
    backward: Event


def observe(graph: list[dict]) -> list[tuple[str, str]]:
    """(loss, input function) pairs found in one loss graph."""
    children: dict[int, list[int]] = {}
    for index, node in enumerate(graph):
        children.setdefault(node.get("parent", -1), []).append(index)

    def first_real(index: int) -> list[int]:
        found, queue = [], list(children.get(index, []))
        while queue:
            child = queue.pop(0)
            if graph[child]["name"] in _THROUGH:
                queue.extend(children.get(child, []))
            else:
                found.append(child)
        return found

    pairs = []
    for index, node in enumerate(graph):
        name = node["name"]
        if name in _NLL:
            for child in first_real(index):
                child_name = graph[child]["name"]
                if child_name == "LogSoftmaxBackward0":
                    # cross_entropy = nll_loss(log_softmax(x)): what fed the log_softmax?
                    for inner in first_real(child):
                        inner_name = graph[inner]["name"]
                        if inner_name == "SoftmaxBackward0":
                            pairs.append(("cross_entropy", "softmax"))
                        elif inner_name == "LogSoftmaxBackward0":
                            pairs.append(("cross_entropy", "log_softmax"))
                elif child_name == "SoftmaxBackward0":
                    pairs.append(("nll_loss", "softmax"))
        elif name == _BCE_LOGITS:
            for child in first_real(index):
                if graph[child]["name"] == "SigmoidBackward0":
                    pairs.append(("bce_with_logits", "sigmoid"))
    return pairs


@dataclass
class Site:
    line: int
    text: str
    how: str


def static_sites(ctx: StaticContext, fed: str) -> list[Site]:
    """Where the source applies ``fed`` (softmax, log_softmax, sigmoid), best candidates first."""
    names = _KINDS[fed][1]
    lowered, module_name = names[0], names[1]
    loss_calls = []
    for call in ctx.calls():
        name = (call_name(call) or "").rsplit(".", 1)[-1].lower()
        if "loss" in name or "criterion" in name or name in ("cross_entropy", "nll_loss",
                                                             "binary_cross_entropy_with_logits"):
            loss_calls.append(call)
    fed_to_loss = {id(arg) for call in loss_calls for arg in [*call.args, *(k.value for k in call.keywords)]}
    loss_arg_names = {dotted_name(arg) for call in loss_calls for arg in call.args if dotted_name(arg)}
    forwards = [f for f in ast.walk(ctx.tree) if isinstance(f, ast.FunctionDef) and f.name == "forward"]
    forward_nodes = {id(n) for f in forwards for n in ast.walk(f)}
    returned = {id(n) for f in forwards for r in ast.walk(f) if isinstance(r, ast.Return) and r.value is not None
                for n in ast.walk(r.value)}
    ranked: list[tuple[int, Site]] = []
    for node in ast.walk(ctx.tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and _applies(node.value, lowered,
                                                                                          module_name):
            targets = {dotted_name(t) for t in node.targets}
            if targets & loss_arg_names:
                ranked.append((1, _site(ctx, node.value, "its result is passed to the loss")))
    for call in ctx.calls():
        if not _applies(call, lowered, module_name):
            continue
        last = (call_name(call) or "").rsplit(".", 1)[-1]
        if id(call) in fed_to_loss:
            ranked.append((0, _site(ctx, call, "passed straight to the loss")))
        elif id(call) in returned:
            ranked.append((2, _site(ctx, call, "returned by the model's forward()")))
        elif last == module_name:
            ranked.append((3, _site(ctx, call, f"an `nn.{module_name}` layer")))
        elif id(call) in forward_nodes:
            ranked.append((4, _site(ctx, call, "in the model's forward()")))
    # Among layers and forward() code, the last one is the nearest the output.
    ranked.sort(key=lambda item: (item[0], -item[1].line if item[0] >= 3 else item[1].line))
    seen, sites = set(), []
    for _, site in ranked:
        if site.line not in seen:
            seen.add(site.line)
            sites.append(site)
    return sites


def _applies(call: ast.Call, lowered: str, module_name: str) -> bool:
    name = call_name(call)
    if name is None:
        # torch.nn.Softmax(dim=1)(x) and similar
        return isinstance(call.func, ast.Call) and _applies(call.func, lowered, module_name)
    last = name.rsplit(".", 1)[-1]
    return last == lowered or last == module_name


def _site(ctx: StaticContext, call: ast.Call, how: str) -> Site:
    text = ast.unparse(call)
    return Site(line=call.lineno, text=text, how=how)


class SoftmaxBeforeCrossEntropy(Check):
    """## What it does
    Reads the autograd graph of the loss at sampled `backward()` calls and finds a loss that expects
    logits fed with probabilities: `CrossEntropyLoss`/`F.cross_entropy` on the output of `softmax`,
    `BCEWithLogitsLoss` on the output of `sigmoid`, and `NLLLoss` on `softmax` probabilities instead of
    log-probabilities. `CrossEntropyLoss` on `log_softmax` output is reported as advice. The finding
    points at the `softmax`/`sigmoid` in the source when it can be found. Without a run
    (`--static-only`), a softmax/sigmoid output passed straight (or through one variable) to
    `cross_entropy`/`CrossEntropyLoss`/`BCEWithLogitsLoss` is a warning.

    ## Why is this bad?
    `CrossEntropyLoss` applies `log_softmax` itself. Fed probabilities, it computes
    `log_softmax(softmax(x))`: the inputs lie in [0, 1], so the predicted distribution can never be
    confident, the loss cannot go below about `ln(C) - 1` for C classes, and gradients shrink as the
    model learns. Training stalls at a high loss with mediocre accuracy. The same holds for
    `BCEWithLogitsLoss` after a sigmoid. `NLLLoss` on probabilities optimizes `-p` instead of `-log p`.

    ## Example
    ```python
    probs = torch.softmax(model(x), dim=1)
    loss = nn.CrossEntropyLoss()(probs, y)
    ```

    ## Use instead
    ```python
    logits = model(x)
    loss = nn.CrossEntropyLoss()(logits, y)
    ```

    ## Fix
    Give the loss the raw scores. Keep `softmax`/`sigmoid` for metrics and inference only.
    `CrossEntropyLoss` on `log_softmax` output computes the same value (log_softmax is idempotent) and
    is reported as info only.

    ## Known limits
    Only probabilities produced by `softmax`/`sigmoid` in the loss's own autograd graph are found:
    probabilities computed outside autograd (a detached tensor, numpy) or by a custom function are not.
    """

    code = "CC010"
    name = "softmax-before-cross-entropy"
    severity = Severity.ERROR
    summary = "Probabilities (softmax/sigmoid outputs) fed to a loss that expects logits."
    needs = frozenset({"graph"})

    _pending: list[Finding] = []

    def check_static(self, ctx: StaticContext) -> Iterable[Finding]:
        found = list(self._static(ctx))
        return self.defer_static(found)

    def _static(self, ctx: StaticContext) -> Iterable[Finding]:
        for call, loss, fed, arg in static_loss_inputs(ctx):
            fix = _FIX_SIGMOID if loss == "bce_with_logits" else _FIX_SOFTMAX
            what = "BCEWithLogitsLoss" if loss == "bce_with_logits" else "cross-entropy"
            yield self.finding(
                f"`{ast.unparse(arg)}` ({fed} output) is passed to {what}, which expects logits and applies "
                f"{'the sigmoid' if loss == 'bce_with_logits' else 'log_softmax'} itself.",
                fix=fix, location=(ctx.display_path, call.lineno), severity=Severity.WARNING, source="static",
                evidence={"loss": loss, "input": fed},
            )

    def check_runtime(self, run: RunTrace, ctx: StaticContext) -> Iterable[Finding]:
        pending, self._pending = list(self._pending), []
        proc = next(iter(run.trainers), None)
        if proc is None or not proc.of("backward"):
            return pending
        seen: dict[tuple[str, str], list[Event]] = {}
        sampled = 0
        for event in proc.of("backward"):
            graph = event.get("graph")
            if not graph:
                continue
            sampled += 1
            for pair in set(observe(graph)):
                seen.setdefault(pair, []).append(event)
        findings = []
        for (loss, fed), events in sorted(seen.items()):
            findings.append(self._finding(loss, fed, events, sampled, ctx))
        return findings

    def _finding(self, loss: str, fed: str, events: list[Event], sampled: int, ctx: StaticContext) -> Finding:
        backward = events[0]
        sites = static_sites(ctx, fed) if ctx is not None else []
        site = sites[0] if sites else None
        location = (ctx.display_path, site.line) if site else backward.get("loc")
        where = f" at line {site.line} (`{site.text}`, {site.how})" if site else ""
        seen_in = f"{len(events)} of {sampled} sampled backward() calls"
        evidence: dict[str, Any] = {
            "loss": loss, "input": fed, "graph_path": _path(loss, fed), "backward_loc": backward.get("loc"),
            "backwards_seen": [e.get("n") for e in events][:10], "backwards_sampled": sampled,
            "source_sites": [{"line": s.line, "code": s.text} for s in sites[:5]],
        }
        severity = Severity.ERROR
        if loss == "cross_entropy" and fed == "softmax":
            message = (f"The loss is cross-entropy over softmax probabilities{where}: CrossEntropyLoss applies "
                       f"log_softmax itself, so it sees values in [0, 1] and cannot become confident ({seen_in}).")
            fix = _FIX_SOFTMAX
        elif loss == "bce_with_logits":
            message = (f"BCEWithLogitsLoss is fed sigmoid outputs{where}: it applies the sigmoid again, so its "
                       f"input is squeezed into [0.5, 0.73] ({seen_in}).")
            fix = _FIX_SIGMOID
        elif loss == "nll_loss":
            message = (f"NLLLoss is fed softmax probabilities{where} instead of log-probabilities: it minimizes "
                       f"-p rather than -log p ({seen_in}).")
            fix = _FIX_NLL_PROBS
        else:
            message = (f"CrossEntropyLoss is fed log_softmax output{where}: it applies log_softmax again. The "
                       f"value is unchanged (log_softmax is idempotent), but it costs a pass and hides which "
                       f"loss is meant ({seen_in}).")
            fix = _FIX_LOG_SOFTMAX
            severity = Severity.INFO
        return self.finding(message, fix=fix, location=location, severity=severity, evidence=evidence,
                            headline="graph_path")


_LOSS_FUNCTIONS = {"cross_entropy": "cross_entropy", "CrossEntropyLoss": "cross_entropy",
                   "binary_cross_entropy_with_logits": "bce_with_logits", "BCEWithLogitsLoss": "bce_with_logits"}
_EXPECTS = {"cross_entropy": ("softmax",), "bce_with_logits": ("sigmoid",)}


def static_loss_inputs(ctx: StaticContext) -> list[tuple[ast.Call, str, str, ast.AST]]:
    """Loss calls whose input is visibly a softmax/sigmoid output: (call, loss, function, argument)."""
    assigned = ctx.assignments()

    def loss_of(call: ast.Call) -> str | None:
        func = call.func
        if isinstance(func, ast.Call):  # nn.CrossEntropyLoss()(x, y)
            return _LOSS_FUNCTIONS.get((call_name(func) or "").rsplit(".", 1)[-1])
        name = call_name(call) or ""
        found = _LOSS_FUNCTIONS.get(name.rsplit(".", 1)[-1])
        if found is None and name in assigned:
            value = assigned[name][-1]
            if isinstance(value, ast.Call):
                found = _LOSS_FUNCTIONS.get((call_name(value) or "").rsplit(".", 1)[-1])
        return found

    def fed_by(arg: ast.AST) -> str | None:
        if isinstance(arg, ast.Name) and arg.id in assigned:
            arg = assigned[arg.id][-1]
        if isinstance(arg, ast.Call):
            last = (call_name(arg) or "").rsplit(".", 1)[-1]
            for fed, (_, names) in _KINDS.items():
                if last == names[0]:
                    return fed
        return None

    found = []
    for call in ctx.calls():
        loss = loss_of(call)
        if loss is None or not call.args:
            continue
        fed = fed_by(call.args[0])
        if fed in _EXPECTS[loss]:
            found.append((call, loss, fed, call.args[0]))
    return found


def _path(loss: str, fed: str) -> list[str]:
    node = {"softmax": "SoftmaxBackward0", "log_softmax": "LogSoftmaxBackward0", "sigmoid": "SigmoidBackward0"}[fed]
    if loss == "cross_entropy":
        return ["NllLossBackward0", "LogSoftmaxBackward0", node]
    if loss == "nll_loss":
        return ["NllLossBackward0", node]
    return [_BCE_LOGITS, node]
