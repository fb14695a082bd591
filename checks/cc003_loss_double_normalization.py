"""CC003 loss-double-normalization: a mean-reduced loss divided again by the batch size; gradient
accumulation whose loss is not divided by the number of micro-batches, or divided twice."""

from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from convcheck.findings import Finding, Severity
from convcheck.registry import Check
from convcheck.runtime.trace import Event, ProcessTrace, RunTrace
from convcheck.static.context import StaticContext, dotted_name
from convcheck.static.flow import Flow, keyword, last_segment, user_location

_FIX_DOUBLE_COUNT = (
    "Remove the second division: a loss with reduction='mean' already averages over every target it counts "
    "(ignore_index excluded). To normalize by the number of tokens yourself, build the loss with "
    "reduction='sum' and divide once."
)
_FIX_DOUBLE = (
    "Remove the division by the batch size: a loss with reduction='mean' is already the average over the "
    "batch. If you want a per-sample sum divided by the number of samples, build the loss with "
    "reduction='sum' and divide once."
)
_FIX_ACCUM = (
    "Divide the loss by the number of micro-batches per optimizer step (`(loss / accum_steps).backward()`), "
    "so that the accumulated gradient is the mean over the whole effective batch."
)
_FIX_ACCUM_TWICE = (
    "Divide the loss by the number of micro-batches only: the mean-reduced loss is already averaged over "
    "each micro-batch, so dividing by the batch size as well shrinks the gradient once more."
)
_FIX_TRAINER = (
    "In a Hugging Face Trainer's compute_loss, either return the micro-batch's mean loss and set "
    "`loss_is_scaled_for_ga = False` on your Trainer subclass (the Trainer then divides by "
    "gradient_accumulation_steps), or return `F.cross_entropy(logits, labels, reduction='sum') / "
    "num_items_in_batch`: the Trainer passes the number of items over all accumulated micro-batches and, "
    "for models that accept loss keyword arguments, does not divide by the accumulation count itself."
)

#: torch.nn.functional losses and the nn.Module losses that reduce by the mean by default.
_LOSS_FUNCTIONS = frozenset({
    "cross_entropy", "nll_loss", "mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "binary_cross_entropy",
    "binary_cross_entropy_with_logits", "kl_div", "soft_margin_loss", "multilabel_soft_margin_loss",
    "poisson_nll_loss", "gaussian_nll_loss", "cosine_embedding_loss", "margin_ranking_loss",
    "hinge_embedding_loss", "multi_margin_loss", "triplet_margin_loss",
})
_LOSS_MODULES = frozenset({
    "CrossEntropyLoss", "NLLLoss", "MSELoss", "L1Loss", "SmoothL1Loss", "HuberLoss", "BCELoss",
    "BCEWithLogitsLoss", "KLDivLoss", "SoftMarginLoss", "MultiLabelSoftMarginLoss", "PoissonNLLLoss",
    "GaussianNLLLoss", "CosineEmbeddingLoss", "MarginRankingLoss", "HingeEmbeddingLoss", "MultiMarginLoss",
    "TripletMarginLoss",
})
#: Names that hold a batch size.
_BATCH_NAMES = frozenset({"batch_size", "bs", "bsz", "batch", "batchsize", "b", "n_batch", "num_samples",
                          "n_samples", "local_batch_size", "micro_batch_size", "per_device_batch_size"})
#: Autograd nodes of losses that record their reduction (0 none, 1 mean, 2 sum).
_REDUCED = frozenset({
    "NllLossBackward0", "NllLoss2DBackward0", "MseLossBackward0", "SmoothL1LossBackward0", "HuberLossBackward0",
    "BinaryCrossEntropyBackward0", "BinaryCrossEntropyWithLogitsBackward0", "SoftMarginLossBackward0",
    "MultiMarginLossBackward0", "MultilabelMarginLossBackward0", "L1LossBackward0",
})
#: Nodes a loss passes through unchanged in scale (casts under AMP, copies, sums with other terms).
_THROUGH = frozenset({
    "AddBackward0", "AddBackward1", "SubBackward0", "SubBackward1", "NegBackward0", "CloneBackward0",
    "ToCopyBackward0", "MulBackward1", "ViewBackward0", "ReshapeAliasBackward0", "SqueezeBackward0",
    "SqueezeBackward1", "UnsqueezeBackward0", "ExpandBackward0",
})


class LossDoubleNormalization(Check):
    """## What it does
    Finds a loss that is averaged twice: a loss built with `reduction='mean'` (the default of every
    `torch.nn` loss, and `.mean()`) that is then divided again by the batch size, or by any other count of
    what the mean already averaged over (a token-mean cross-entropy divided again by its number of non-pad
    tokens). With gradient accumulation, it also finds losses that are not divided by the number of
    micro-batches per optimizer step, and losses divided by both. Only the backward passes whose gradients
    reach a step count as accumulated: a gradient clear in between (an LBFGS closure, a hand-written SGD
    loop, a SAM-style two-pass step) starts a new count.

    At run time it reads the autograd graph of the loss at each sampled `backward()` before the graph is
    freed: the loss node's reduction and batch size, and every division on the way to the value
    `backward()` was called on. It counts the `backward()` calls between optimizer steps. From the source
    it finds `criterion(out, y) / batch_size` and `loss /= x.size(0)` after a mean-reduced loss, also in
    the loss a Hugging Face Trainer's `compute_loss` or a Lightning `training_step` returns.

    Frameworks divide the loss themselves, and the graph shows what they did: Lightning's
    `accumulate_grad_batches` and accelerate's `accumulate()` divide by the accumulation count; a
    transformers 5 Trainer passes `num_items_in_batch` and, for models that take loss keyword arguments,
    leaves the division over the accumulated batch to `compute_loss`. A mean divided by the batch size
    again *and* not by the accumulation count is reported with the net factor (batch size / count).

    ## Why is this bad?
    A mean-reduced loss is already the average over the batch. Dividing it by the batch size again makes
    every gradient B times too small: the effective learning rate drops by the batch size, training looks
    stuck, and changing the batch size silently changes the learning rate. With k micro-batches
    accumulated per step and no division by k, the gradient is k times the mean: the effective learning
    rate grows with the accumulation count.

    ## Example
    ```python
    criterion = nn.CrossEntropyLoss()
    loss = criterion(model(x), y) / x.size(0)  # already a mean over the batch
    loss.backward()
    ```

    ## Use instead
    ```python
    criterion = nn.CrossEntropyLoss()
    loss = criterion(model(x), y)
    loss.backward()
    ```
    or, with accumulation over `accum` micro-batches:
    ```python
    (criterion(model(x), y) / accum).backward()
    ```

    ## Fix
    Divide a mean-reduced loss only by the number of accumulated micro-batches. If a per-sample sum is
    wanted, use `reduction='sum'` and divide once by the number of samples. A sum-reduced loss divided by
    the batch size, a division by the accumulation count, and label smoothing are not reported.

    ## Known limits
    Loss graphs are read at sampled `backward()` calls (the first five and every tenth). A division by a value
    that is not a count the mean already averaged over (the batch size, the counted targets, the elements) is
    taken as a weight and not reported; normalisation inside a custom `autograd.Function` or a loss computed
    outside autograd is invisible.
    """

    code = "CC003"
    name = "loss-double-normalization"
    severity = Severity.ERROR
    summary = "A mean-reduced loss divided again by the batch size; accumulation not divided by its count."
    needs = frozenset({"graph"})

    _pending: list[Finding]

    # -- static ------------------------------------------------------------------------------

    def check_static(self, ctx: StaticContext) -> Iterable[Finding]:
        found = list(self._static(ctx))
        return self.defer_static(found)

    def _static(self, ctx: StaticContext) -> Iterable[Finding]:
        for site in static_divisions(ctx):
            yield self.finding(
                f"`{site.loss}` is a mean-reduced loss ({site.why}) and is divided again by `{site.divisor}`, "
                "which looks like the batch size: the gradient becomes batch-size times too small.",
                fix=_FIX_DOUBLE, location=(ctx.display_path, site.line), severity=Severity.WARNING,
                source="static", evidence={"loss": site.loss, "divisor": site.divisor, "reduction": "mean"},
            )

    # -- runtime -----------------------------------------------------------------------------

    def check_runtime(self, run: RunTrace, ctx: StaticContext) -> Iterable[Finding]:
        pending = list(getattr(self, "_pending", []))
        self._pending = []
        proc = next(iter(run.trainers), None)
        if proc is None:
            return pending
        observations = observe(proc)
        if not observations:
            return pending  # no graph was recorded: the source is the only evidence
        findings: list[Finding] = []
        verdict = _worst(observations)
        if verdict is not None and verdict.kind == "accum-missing":
            per_step = batches_per_step(proc)
            if per_step is not None and per_step < 1.5:
                # Several backward calls on one batch (a loss per task or per head), not accumulation.
                verdict = None
        if verdict is not None:
            finding = self._runtime_finding(verdict, observations, ctx)
            twin = _nearest(pending, finding)
            if twin is not None and verdict.kind in ("double", "double-accum-missing", "accum-twice"):
                finding = finding.model_copy(update={"location": twin.location, "source": "static+runtime"})
            findings.append(finding)
        # Static suspicions the graphs contradict (no division by the batch size was seen) are dropped.
        return findings

    def _runtime_finding(self, obs: Observation, all_obs: list[Observation], ctx: StaticContext) -> Finding:
        where = user_location(obs.loc, ctx)
        count = sum(1 for o in all_obs if o.kind == obs.kind)
        evidence: dict[str, Any] = {
            "loss_node": obs.node, "reduction": obs.reduction, "batch_size": obs.batch,
            "divisors": obs.divisors, "backwards_per_step": obs.k, "backward_calls_seen": count,
            "loss_value": obs.loss,
        }
        # A division by 1 (accelerate's backward without accumulation) changes nothing worth naming.
        divisors = " × ".join(_fmt(d) for d in obs.divisors if not _close(d, 1.0)) or "nothing"
        fix_double = _FIX_DOUBLE + (" " + _FIX_TRAINER if hf_trainer_compute_loss(ctx) else "")
        if obs.kind == "double-accum-missing":
            net = obs.batch / obs.k
            evidence["gradient_scale"] = obs.k / obs.batch
            size = f"{_fmt(round(net, 3))}× too small" if net > 1 else f"{_fmt(round(1 / net, 3))}× too large"
            message = (
                f"{obs.k} backward() calls accumulate into each optimizer step and the loss ({obs.node}, "
                f"reduction='mean' over a batch of {obs.batch}) was divided by {divisors}: by the batch size a "
                f"second time, and not by the accumulation count. Each micro-batch's gradient is {obs.batch}× too "
                f"small and {obs.k} of them are summed, so each step's gradient is {size} "
                f"({obs.batch}× smaller from the double mean, {obs.k}× larger from the undivided accumulation)."
            )
            fix = fix_double if hf_trainer_compute_loss(ctx) else f"{_FIX_DOUBLE} {_FIX_ACCUM}"
            return self.finding(message, fix=fix, location=where, evidence=evidence, headline="divisors")
        if obs.kind == "double" and obs.count:
            evidence["averaged_over"] = {"count": obs.count, "what": obs.count_what}
            message = (
                f"The loss ({obs.node}, reduction='{obs.reduction}') is already a mean over its {obs.count} "
                f"{obs.count_what}, and was divided by {divisors} again before backward(): the same count divides "
                f"it twice, so gradients are {obs.count}× too small (seen in {count} of the sampled backward calls)."
            )
            return self.finding(message, fix=_FIX_DOUBLE_COUNT, location=where, evidence=evidence,
                                headline="averaged_over")
        if obs.kind == "double":
            message = (
                f"The loss ({obs.node}, reduction='{obs.reduction}' over a batch of {obs.batch}) was divided by "
                f"{divisors} "
                f"before backward(): the batch size divides it twice, so gradients are {obs.batch}× too small "
                f"(seen in {count} of the sampled backward calls)."
            )
            return self.finding(message, fix=fix_double, location=where, evidence=evidence, headline="divisors")
        if obs.kind == "accum-twice":
            message = (
                f"{obs.k} backward() calls accumulate into each optimizer step and the loss ({obs.node}, "
                f"reduction='mean' over a batch of {obs.batch}) was divided by {divisors}: by the accumulation "
                f"count and by the batch size, so gradients are {obs.batch}× too small."
            )
            return self.finding(message, fix=_FIX_ACCUM_TWICE, location=where, evidence=evidence, headline="divisors")
        message = (
            f"{obs.k} backward() calls accumulate into each optimizer step, but the loss ({obs.node}, "
            f"{obs.reduction}-reduced over a batch of {obs.batch}) is divided by {divisors}: the accumulated "
            f"gradient is {obs.k}× the mean gradient, so the effective learning rate is {obs.k}× the one set."
        )
        fix = _FIX_TRAINER if hf_trainer_compute_loss(ctx) else _FIX_ACCUM
        return self.finding(message, fix=fix, location=where, evidence=evidence, severity=Severity.WARNING,
                            headline="backwards_per_step")


# -- runtime analysis of recorded loss graphs -------------------------------------------------------


@dataclass
class Observation:
    """One loss term seen at one backward call, and what its divisions amount to."""

    kind: str  # "double", "accum-missing", "accum-twice", "accum-ok", "ok"
    node: str
    reduction: str
    batch: int
    divisors: list[float]
    k: int
    loc: Any
    loss: Any
    #: Set when the second division was by what the mean already averaged over (not the batch size).
    count: int | None = None
    count_what: str = ""


def observe(proc: ProcessTrace) -> list[Observation]:
    """Every loss term in every recorded loss graph of this process, judged against its step's backward count."""
    groups = backward_groups(proc)
    sizes = [len(g) for g, closed in groups if closed]
    usual = Counter(sizes).most_common(1)[0][0] if sizes else 1
    found = []
    for group, closed in groups:
        # Backward calls after the last step: as many as usual per step, or one each if nothing stepped.
        k = len(group) if closed else (max(usual, len(group)) if sizes else 1)
        for event in group:
            graph = event.get("graph")
            if not graph:
                continue
            for term in loss_terms(graph):
                found.append(_judge(term, k, event))
    return found


def backward_groups(proc: ProcessTrace) -> list[tuple[list[Event], bool]]:
    """The backward calls that fed each optimizer step (closed), and the trailing ones with no step yet.

    A step a GradScaler skipped (inf/NaN gradients) ends its group too: its backward was not accumulated.
    So does a gradient clear: what was computed before it never reaches a step, whether a closure (LBFGS)
    clears and re-runs backward, a hand-written SGD loop clears before each backward, or a SAM-style
    step computes a first gradient and throws it away.
    """
    groups: list[tuple[list[Event], bool]] = []
    current: list[Event] = []
    for event in proc.events:
        kind = event["ev"]
        if kind == "backward":
            current.append(event)
        elif (kind in ("step", "zero_grad") or (kind == "scaler" and event.get("call") == "step"
                                               and event.get("skipped"))) and current:
            groups.append((current, True))
            current = []
    if current:
        groups.append((current, False))
    return groups


@dataclass
class Term:
    node: str
    reduction: str  # "mean" or "sum"
    batch: int
    divisors: list[float]
    #: What a mean averaged over besides the batch: the targets it counted (not ignore_index), or its elements.
    count: int | None = None
    count_what: str = ""


def loss_terms(graph: list[Event]) -> list[Term]:
    """The reduced loss nodes reachable from the root through scale-preserving nodes, with the divisors met."""
    children: dict[int, list[int]] = {}
    for index, node in enumerate(graph):
        children.setdefault(node.get("parent", -1), []).append(index)
    terms: list[Term] = []
    # (node, divisors met, whether a sum of terms was passed on the way)
    todo: list[tuple[int, list[float], bool]] = [(0, [], False)] if graph else []
    while todo:
        index, divisors, branched = todo.pop()
        node = graph[index]
        name = node.get("name", "")
        attrs = node.get("attrs") or {}
        kids = children.get(index, [])
        divisor = _divisor(name, attrs)
        if divisor is not None and name == "MulBackward0" and branched:
            # ``loss + 0.1 * aux``: a weight on one term, not a normalization of the loss.
            divisor = None
        if divisor is not None:
            # A sum divided by its own length is a mean (label smoothing, batchmean): seen as one term.
            below = [graph[c] for c in kids]
            if (len(below) == 1 and below[0].get("name") == "SumBackward0"
                    and _first_dim((below[0].get("attrs") or {}).get("self_sym_sizes")) == divisor):
                terms.append(Term("SumBackward0/len", "mean", int(divisor), divisors))
                continue
            todo.extend((c, [*divisors, divisor], branched) for c in kids)
            continue
        if name in _REDUCED:
            reduction = attrs.get("reduction")
            shape = (attrs.get("self") or {}).get("shape")
            batch = _first_dim(shape)
            if reduction in (1, 2) and batch:
                count, what = _mean_count(name, attrs, shape)
                terms.append(Term(name, "mean" if reduction == 1 else "sum", batch, divisors, count, what))
            continue
        if name == "MeanBackward0":
            shape = attrs.get("self_sym_sizes")
            batch = _first_dim(shape)
            if batch:
                terms.append(Term(name, "mean", batch, divisors, _numel(shape), "elements"))
            continue
        if name == "SumBackward0":
            batch = _first_dim(attrs.get("self_sym_sizes"))
            if batch:
                terms.append(Term(name, "sum", batch, divisors))
            continue
        if name in _THROUGH or (name == "MulBackward0" and _scalar(attrs.get("other")) is not None):
            fork = branched or name in ("AddBackward0", "AddBackward1", "SubBackward0", "SubBackward1")
            todo.extend((c, divisors, fork) for c in kids)
    return terms


def _mean_count(name: str, attrs: dict[str, Any], shape: Any) -> tuple[int | None, str]:
    """The number of values a mean-reduced loss averaged, beyond its batch: counted targets or elements."""
    if name.startswith("NllLoss"):
        counted = attrs.get("counted")
        return (int(counted), "counted targets (ignore_index left out)") if isinstance(counted, int) else (None, "")
    return _numel(shape), "elements"


def _numel(shape: Any) -> int | None:
    if not isinstance(shape, list) or not shape or not all(isinstance(d, (int, float)) for d in shape):
        return None
    total = 1
    for dim in shape:
        total *= int(dim)
    return total


def _judge(term: Term, k: int, event: Event) -> Observation:
    batch = term.batch
    total = 1.0
    for d in term.divisors:
        total *= d
    kind = "ok"
    if term.reduction == "sum":
        # A sum divided by the batch size is a mean: only what is divided beyond that counts.
        extra = total / batch if batch else 0.0
        integral = batch >= 1 and _close(extra, round(extra)) and extra >= 1
        twice = integral and batch >= 2 and batch != k and (_close(extra, batch) or _close(extra, batch * k))
    else:
        extra = total
        integral = True
        twice = batch >= 2 and batch != k and (
            any(_close(d, batch) for d in term.divisors) or _close(extra, batch) or _close(extra, batch * k)
        )
        count = term.count
        if not twice and count and count >= 2 and count not in (batch, k) and (
            any(_close(d, count) for d in term.divisors) or _close(extra, count)
        ):
            # A token-mean divided again by its number of tokens: the same double normalization.
            return Observation("double", term.node, term.reduction, batch, term.divisors, k, event.get("loc"),
                               event.get("loss"), count, term.count_what)
    if twice:
        kind = "accum-twice" if k >= 2 and _close(extra, batch * k) else "double"
        if kind == "double" and k >= 2 and not any(_close(d, k) for d in term.divisors):
            kind = "double-accum-missing"
    elif integral and k >= 2 and _close(extra, 1.0):
        kind = "accum-missing"
    elif integral and k >= 2 and _close(extra, k):
        kind = "accum-ok"
    return Observation(kind, term.node, term.reduction, batch, term.divisors, k, event.get("loc"), event.get("loss"))


def _worst(observations: list[Observation]) -> Observation | None:
    """The observation to report: a double normalization first; accumulation only if every term agrees."""
    # A named loss node reads better than the internal mean of label smoothing.
    ordered = sorted(observations, key=lambda o: o.node.endswith("/len"))
    for kind in ("double-accum-missing", "double", "accum-twice"):
        hit = next((o for o in ordered if o.kind == kind), None)
        if hit is not None:
            return hit
    missing = [o for o in ordered if o.kind == "accum-missing"]
    if missing and not any(o.kind == "accum-ok" for o in observations):
        return missing[0]
    return None


def batches_per_step(proc: ProcessTrace) -> float | None:
    """DataLoader batches drawn per optimizer step by the training loaders; None when no loader was seen."""
    batches = steps = 0
    for epoch in proc.of("loader_epoch"):
        start, end = epoch.get("step_start"), epoch.get("step")
        if start is None or end is None or end <= start:
            continue
        batches += int(epoch.get("batches") or 0)
        steps += end - start
    return batches / steps if steps else None


def _divisor(name: str, attrs: dict[str, Any]) -> float | None:
    """The scalar a Div node divides by, or 1/x of a Mul by a reciprocal (``loss * (1 / n)``)."""
    if name in ("DivBackward0", "DivBackward1"):
        value = _scalar(attrs.get("other"))
        return value if value is not None and value != 0 else None
    if name == "MulBackward0":
        value = _scalar(attrs.get("other"))
        if value and 0 < value < 1:
            inverse = 1.0 / value
            n = round(inverse)
            # 0.5, 0.25, 0.1, 0.01 are loss weights far more often than a division by a batch of that size.
            if abs(inverse - n) < 1e-3 * inverse and n >= 8 and n not in (10, 100, 1000):
                return float(n)
    return None


def _scalar(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict) and value.get("shape") in ([], [1]) and isinstance(value.get("value"), (int, float)):
        return float(value["value"])
    return None


def _first_dim(shape: Any) -> int | None:
    if isinstance(shape, list) and shape and isinstance(shape[0], (int, float)):
        return int(shape[0])
    return None


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-4 * max(1.0, abs(b))


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _nearest(pending: list[Finding], finding: Finding) -> Finding | None:
    """The static finding that most likely names this runtime finding's division (the last before its backward)."""
    if not pending:
        return None
    line = finding.location.line if finding.location and finding.location.line else 1 << 30
    before = [p for p in pending if p.location and (p.location.line or 0) <= line]
    return (before or pending)[-1]


# -- static analysis --------------------------------------------------------------------------------


@dataclass
class DivisionSite:
    line: int
    loss: str
    divisor: str
    why: str


def static_divisions(ctx: StaticContext) -> list[DivisionSite]:
    """Divisions of a mean-reduced loss by something that looks like the batch size, whose result reaches backward()."""
    flow = Flow(ctx)
    backward_names = _backward_names(ctx)
    sites: list[DivisionSite] = []
    for node in ast.walk(ctx.tree):
        if isinstance(node, ast.AugAssign) and isinstance(node.op, ast.Div):
            target = dotted_name(node.target)
            if target is None or target not in backward_names:
                continue
            why = _mean_loss(node.target, flow, node.lineno)
            if why and _is_batch_size(node.value, flow, node.lineno):
                sites.append(DivisionSite(node.lineno, target, ast.unparse(node.value), why))
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.BinOp) and isinstance(node.value.op, ast.Div):
            names = [dotted_name(t) for t in node.targets]
            if not any(n in backward_names for n in names if n):
                continue
            site = _division(node.value, flow, node.lineno)
            if site:
                sites.append(site)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "backward":
            receiver = _unwrap_scale(node.func.value)
            if isinstance(receiver, ast.BinOp) and isinstance(receiver.op, ast.Div):
                site = _division(receiver, flow, node.lineno)
                if site:
                    sites.append(site)
    unique = {s.line: s for s in sites}
    return [unique[line] for line in sorted(unique)]


def _division(expr: ast.BinOp, flow: Flow, line: int) -> DivisionSite | None:
    why = _mean_loss(expr.left, flow, line)
    if why and _is_batch_size(expr.right, flow, line):
        return DivisionSite(line, ast.unparse(expr.left), ast.unparse(expr.right), why)
    return None


def _unwrap_scale(node: ast.AST) -> ast.AST:
    """``scaler.scale(x)`` → ``x``."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "scale" and node.args:
        return node.args[0]
    return node


#: Methods whose returned loss a framework calls backward() on (HF Trainer, Lightning).
_FRAMEWORK_LOSS_METHODS = frozenset({"compute_loss", "training_step"})


def _backward_names(ctx: StaticContext) -> set[str]:
    """Names that ``.backward()`` is called on (directly, through ``scaler.scale(name)``, or by a framework)."""
    names = set()
    for call in ctx.calls():
        if isinstance(call.func, ast.Attribute) and call.func.attr == "backward":
            name = dotted_name(_unwrap_scale(call.func.value))
            if name:
                names.add(name)
    for node in ast.walk(ctx.tree):
        if isinstance(node, ast.FunctionDef) and node.name in _FRAMEWORK_LOSS_METHODS:
            names.update(_returned_losses(node))
    return names


def hf_trainer_compute_loss(ctx: StaticContext) -> bool:
    """Whether the script overrides ``compute_loss`` in a subclass of a Hugging Face ``...Trainer``."""
    for node in ast.walk(ctx.tree):
        if isinstance(node, ast.ClassDef) and any(
            (last_segment(dotted_name(base)) or "").endswith("Trainer") for base in node.bases
        ) and any(isinstance(item, ast.FunctionDef) and item.name == "compute_loss" for item in node.body):
            return True
    return False


def _returned_losses(function: ast.FunctionDef) -> set[str]:
    """The loss names a ``compute_loss``/``training_step`` returns: ``loss``, ``(loss, out)``, ``{"loss": loss}``."""
    names = set()
    for node in ast.walk(function):
        if not isinstance(node, ast.Return) or node.value is None:
            continue
        values = [node.value]
        if isinstance(node.value, ast.IfExp):
            values = [node.value.body, node.value.orelse]
        for value in values:
            if isinstance(value, ast.Tuple) and value.elts:
                value = value.elts[0]
            elif isinstance(value, ast.Dict):
                value = next((v for k, v in zip(value.keys, value.values)
                              if isinstance(k, ast.Constant) and k.value == "loss"), None)
            name = dotted_name(value) if value is not None else None
            if name:
                names.add(name)
    return names


def _mean_loss(node: ast.AST, flow: Flow, line: int, depth: int = 0) -> str | None:
    """Why ``node`` is a mean-reduced loss (a short phrase), or None."""
    if depth > 4:
        return None
    if isinstance(node, ast.Call):
        if isinstance(node.func, ast.Call) and last_segment(dotted_name(node.func.func)) in _LOSS_MODULES:
            # nn.MSELoss()(out, y)
            return _reduction_phrase(keyword(node.func, "reduction"), f"{last_segment(dotted_name(node.func.func))}()")
        name = dotted_name(node.func)
        last = last_segment(name)
        if isinstance(node.func, ast.Attribute) and node.func.attr == "mean" and not node.args and not node.keywords:
            return ".mean()"
        if last in _LOSS_FUNCTIONS:
            return _reduction_phrase(keyword(node, "reduction"), f"{last}(...)")
        if name:
            for _, value in reversed(flow.values_of(name, before=line)):
                if isinstance(value, ast.Call) and last_segment(dotted_name(value.func)) in _LOSS_MODULES:
                    return _reduction_phrase(keyword(value, "reduction"), f"{last_segment(dotted_name(value.func))}()")
            if last in _LOSS_MODULES:
                return None
        return None
    name = dotted_name(node)
    if name:
        values = [v for ln, v in flow.values_of(name, before=line) if ln <= line]
        if values:
            return _mean_loss(values[-1], flow, line, depth + 1)
    return None


def _reduction_phrase(reduction: ast.AST | None, what: str) -> str | None:
    if reduction is None:
        return f"{what} averages by default"
    if isinstance(reduction, ast.Constant) and reduction.value == "mean":
        return f"{what} with reduction='mean'"
    if isinstance(reduction, ast.Constant) and reduction.value == "batchmean":
        return f"{what} with reduction='batchmean'"
    if isinstance(reduction, ast.IfExp) and any(
        isinstance(branch, ast.Constant) and branch.value == "mean" for branch in (reduction.body, reduction.orelse)
    ):
        return f"{what} with reduction='mean' in one branch"
    return None


def _is_batch_size(node: ast.AST, flow: Flow, line: int, depth: int = 0) -> bool:
    """``batch_size``, ``args.bs``, ``x.size(0)``, ``x.shape[0]``, ``len(x)``, or a name assigned one of them."""
    if depth > 3:
        return False
    if isinstance(node, ast.Name) and node.id.lower() in _BATCH_NAMES:
        return True
    if isinstance(node, ast.Attribute) and node.attr.lower() in _BATCH_NAMES:
        return True
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "size" and len(node.args) == 1 \
                and isinstance(node.args[0], ast.Constant) and node.args[0].value == 0:
            return True
        if isinstance(func, ast.Name) and func.id == "len" and len(node.args) == 1:
            arg = dotted_name(node.args[0]) or ""
            return not any(word in arg.lower() for word in ("loader", "dataset", "data", "epoch"))
        if isinstance(func, ast.Name) and func.id == "float" and len(node.args) == 1:
            return _is_batch_size(node.args[0], flow, line, depth + 1)
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value == 0:
        value = node.value
        if isinstance(value, ast.Attribute) and value.attr == "shape":
            return True
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) and value.func.attr == "size" \
                and not value.args:
            return True
    if isinstance(node, ast.Name):
        values = [v for ln, v in flow.values_of(node.id, before=line) if ln <= line]
        if values:
            return _is_batch_size(values[-1], flow, line, depth + 1)
    return False
