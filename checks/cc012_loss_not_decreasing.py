"""CC012 loss-not-decreasing: a loss that cannot go down, from what the first steps show."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

from convcheck.findings import Finding, Severity
from convcheck.losscurve import divergence
from convcheck.paths import display_loc
from convcheck.registry import Check, RunVariant
from convcheck.runtime.trace import Event, ProcessTrace, RunTrace
from convcheck.static.context import StaticContext

_BROADCAST = re.compile(r"Using a target size \((?:torch\.Size\()?\[?([^\]\)]*)\]?\)?\) that is different to the "
                        r"input size \((?:torch\.Size\()?\[?([^\]\)]*)\]?\)?\)")
_NLL = frozenset({"NllLossBackward0", "NllLoss2DBackward0"})
#: A first loss this many times the value expected at initialization is far off.
_INIT_FACTOR = 3.0
#: The label of the overfit-one-batch run, and its default length when enabled.
OVERFIT_RUN = "cc012-overfit-one-batch"
_OVERFIT_STEPS = 40
#: On one repeated batch the loss must fall below this share of its first value.
_OVERFIT_TARGET = 0.9

_FIX_NONFINITE = (
    "Find where the first inf/NaN appears: lower the learning rate (a loss that grows step by step before it "
    "turns NaN is diverging), guard log/sqrt/division against 0 (`clamp(min=eps)`), check the inputs for "
    "NaN, and clip gradients (`clip_grad_norm_`)."
)
_FIX_BROADCAST = (
    "Give the loss a target of the same shape as the model's output: e.g. `loss_fn(out.squeeze(-1), y)` or "
    "`loss_fn(out, y.unsqueeze(-1))`. Broadcasting [B, 1] against [B] compares every output with every target."
)
_FIX_SINGLE_COLUMN = (
    "Cross-entropy needs one output column per class (at least 2). For a binary task, either output 2 logits and "
    "use `CrossEntropyLoss` with class indices, or output 1 logit and use `BCEWithLogitsLoss` with float targets."
)
_FIX_DETACHED = (
    "Call backward() on the loss tensor computed from the model's output: not on `torch.tensor(loss.item())`, "
    "`loss.detach()`, `loss.data` or a value rebuilt from numpy, which cut the graph to the parameters."
)
_FIX_SHUFFLED_APART = (
    "Keep inputs and targets in one dataset and one DataLoader (`DataLoader(TensorDataset(X, Y), shuffle=True)`), "
    "so that one shuffle moves both; or give both loaders the same sampler order (a shared seeded generator)."
)
_FIX_INDEXED_APART = (
    "Draw one index vector per batch and use it for both: `idx = perm[i:i + B]; x, y = X[idx], Y[idx]` (one "
    "`torch.randperm(N)` per epoch), or put both tensors in one `TensorDataset` and let a DataLoader shuffle."
)
_FIX_CONSTANT = (
    "Check that the model's output depends on its parameters and the input (no `.detach()`, `.item()` or "
    "`torch.no_grad()` on the way), that the optimizer holds the model's parameters, and that the lr is not 0."
)
_FIX_INIT = (
    "Initialize the last layer so that the first predictions are close to uniform (small weights, zero or "
    "class-prior bias), and check that inputs are normalized: a confident, wrong start costs many steps."
)
_FIX_OVERFIT = (
    "Look between data, model and loss: inputs and targets paired correctly, targets of the shape the loss "
    "expects, the output layer's size, a loss that matches the task, and an lr that is neither 0 nor far too "
    "small. A model should be able to memorize one batch."
)


class LossNotDecreasing(Check):
    """## What it does
    Checks the first steps of training for losses that cannot go down:

    - a loss that turns inf/NaN and stays so to the end of the run, with no GradScaler to skip those
      steps (float16 weights are CC007's; a loss that grew into the inf/NaN is CC015's): every later update
      writes NaN into the weights;
    - inputs and targets in two DataLoaders shuffled independently and iterated together (`zip`):
      every input gets a random target;
    - inputs and targets drawn by hand from two tensors with different index vectors
      (`x = X[px[i:i + B]]; y = Y[py[i:i + B]]` with two `torch.randperm(N)`, or `X[torch.randperm(N)]` and
      `Y[torch.randperm(N)]` sliced into batches), judged from the batches that reach the model and the loss:
      error when both come from two different permutations of all the rows, info otherwise;
    - PyTorch's own broadcast warning from `mse_loss`/`l1_loss` ("Using a target size ... different to
      the input size"), turned into a finding at the user's line: an output of shape [B, 1] against a
      target of shape [B] is compared all-against-all;
    - cross-entropy over a single output column, which is exactly 0 whatever the model does;
    - a loss that is exactly 0 or constant at every step, and a loss not connected to any parameter
      (no parameter received a gradient);
    - a first loss far above the value expected at initialization (`ln C` for C-class cross-entropy,
      `ln 2` for binary cross-entropy with logits): advice;
    - optionally, an overfit-one-batch run: the script runs again for 40 steps with every DataLoader
      yielding its first batch over and over. A model that cannot drive the loss down on one batch has a
      bug between data, model and loss. Enable it with `[tool.convcheck.checks.CC012] overfit-steps = 40`
      (it costs a second run of the script).

    ## Why is this bad?
    These bugs do not crash: the loss is computed, backward runs, the optimizer steps, and training just
    does not improve. Broadcast targets train the model to predict the mean; a single-column
    cross-entropy or a detached loss gives zero gradient; a very high initial loss means the first
    hundreds of steps are spent undoing a confident, wrong initialization.

    ## Example
    ```python
    out = model(x)                    # shape [B, 1]
    loss = F.mse_loss(out, y)         # y has shape [B]: broadcast to [B, B]
    ```

    ## Use instead
    ```python
    out = model(x).squeeze(-1)        # shape [B]
    loss = F.mse_loss(out, y)
    ```

    ## Fix
    Make the output and target shapes match, give cross-entropy one column per class, call backward() on
    the loss computed from the model, and start from near-uniform predictions.

    ## Known limits
    It judges the first steps only: a loss that stalls later, or a problem that shows after an epoch boundary
    beyond the step budget, is not seen. Inputs and labels shuffled apart are found when two loaders are
    zipped, or when the batches that reach the model and the loss were drawn from torch tensors by indexing
    with an integer vector (`A[index]` with a torch tensor or numpy array as the index, or a slice of such a
    batch). Not seen: batches taken from numpy arrays or Python lists (`torch.from_numpy(X_np[perm])`), batches
    copied between indexing and the model or loss (`.to(device)` to another device, `.float()` of another dtype, `torch.cat`), targets of losses that
    do not save them (`l1_loss`, a hand-written loss), and shuffled inputs paired with unshuffled targets
    taken by a plain slice (`Y[i:i + B]`), which carries no index to compare.
    """

    code = "CC012"
    name = "loss-not-decreasing"
    severity = Severity.ERROR
    summary = "A loss that cannot go down: broadcast targets, one-column cross-entropy, detached or constant loss."
    needs = frozenset({"graph", "warnings", "provenance"})

    def extra_runs(self, nproc_per_node: int | None, steps: int, ctx: StaticContext) -> dict[str, RunVariant]:
        wanted = self.options.get("overfit-steps", self.options.get("overfit_steps", 0))
        if wanted is True:
            wanted = _OVERFIT_STEPS
        if not wanted or ctx is None or "DataLoader" not in ctx.source:
            return {}
        return {OVERFIT_RUN: RunVariant(nproc_per_node=nproc_per_node, steps=int(wanted), repeat_first_batch=True)}

    def check_runtime(self, run: RunTrace, ctx: StaticContext) -> Iterable[Finding]:
        proc = next(iter(run.trainers), None)
        if proc is None:
            return []
        findings = self._broadcast(proc)
        # A loss that grows before it turns inf/NaN, or keeps growing, is CC015's: one bug, one finding.
        diverging = divergence(proc) is not None
        nonfinite = None if diverging else self._nonfinite(proc)
        if nonfinite is not None:
            return [*findings, nonfinite]
        apart = self._shuffled_apart(proc) or self._indexed_apart(proc)
        if apart is not None:
            findings.append(apart)
        overfit = self._overfit(run.variants.get(OVERFIT_RUN))
        backwards = [e for e in proc.of("backward") if e.get("loss") is not None]
        single = self._single_column(proc)
        if single is not None:
            findings.append(single)
        detached = self._detached(proc)
        if detached is not None:
            findings.append(detached)
        if single is None and detached is None and not findings:
            constant = self._constant(proc, backwards)
            if constant is not None:
                findings.append(constant)
        if overfit is not None and not findings:
            findings.append(overfit)
        if not findings and not diverging:
            initial = self._initial(backwards)
            if initial is not None:
                findings.append(initial)
        return findings

    # -- a loss that turned inf/NaN for good ----------------------------------------------------------

    def _nonfinite(self, proc: ProcessTrace) -> Finding | None:
        """Every loss inf/NaN from some step on, in a run with no GradScaler and no float16 weights.

        A GradScaler skips such steps and float16 weights have their own cause (both CC007's); here
        nothing will bring the loss back, so the run cannot train at all from that step.
        """
        start = proc.nonfinite_from()
        if start is None or proc.of("scaler"):
            return None
        trained = {i for e in proc.of("step") for i in e.get("grad") or []}
        if any(p.get("dtype") == "torch.float16" for m in proc.of("model") for p in m.get("params", [])
               if p.get("id") in trained):
            return None
        losses = proc.losses_per_step()
        before = [(step, loss) for step, loss in losses.items() if step < start]
        last = next((e for e in proc.of("backward") if e.get("step", 0) + 1 == start), None)
        lrs = (proc.first("step") or {}).get("lrs")
        shown = ", ".join(f"step {step}: {loss:.4g}" for step, loss in before[-4:])
        message = (
            f"The loss is inf/NaN from step {start} to the last step observed ({max(losses)}), and nothing "
            "(no GradScaler) skips those steps: every update from then on writes NaN into the weights, so the "
            "model cannot train."
            + (f" Before that: {shown}." if shown else " It was never finite.")
        )
        return self.finding(
            message, fix=_FIX_NONFINITE, location=(last or {}).get("loc"), headline="nonfinite_from_step",
            evidence={"nonfinite_from_step": start, "steps_observed": max(losses),
                      "finite_losses_before": [round(v, 6) for _, v in before[-8:]], "lrs": lrs},
        )

    # -- overfit one batch ---------------------------------------------------------------------------

    def _overfit(self, variant: RunTrace | None) -> Finding | None:
        if variant is None:
            return None
        proc = next(iter(variant.trainers), None)
        if proc is None or proc.crash is not None or not proc.of("repeat_batch"):
            return None  # the run failed, or the script does not draw its batches from a DataLoader
        per_step: dict[int, list[float]] = {}
        for event in proc.of("backward"):
            if event.get("loss") is not None and math.isfinite(event["loss"]):
                per_step.setdefault(event.get("step", 0), []).append(event["loss"])
        # The backward after the last step (stopped at the budget) belongs to no step.
        curve = [sum(v) / len(v) for step, v in sorted(per_step.items()) if step < max(proc.steps, 1)]
        if len(curve) < 10:
            return None
        first, best, last = curve[0], min(curve), sum(curve[-3:]) / 3
        if first <= 1e-6 or last < _OVERFIT_TARGET * first:
            return None
        loc = next((e.get("loc") for e in proc.of("backward") if e.get("loc")), None)
        shown = ", ".join(f"{curve[i]:.4g}" for i in sorted({0, 1, 2, len(curve) // 2, len(curve) - 2,
                                                                    len(curve) - 1}))
        return self.finding(
            f"On one batch repeated for {len(curve)} steps the loss went from {first:.4g} to {last:.4g} (lowest "
            f"{best:.4g}): a model that cannot fit a single batch has a bug between data, model and loss, or an lr "
            f"far too small. Loss along the way: {shown}.",
            fix=_FIX_OVERFIT, location=loc, severity=Severity.WARNING, headline="curve",
            evidence={"steps": len(curve), "first_loss": first, "last_loss": last, "lowest_loss": best,
                      "curve": [round(v, 6) for v in curve[:60]],
                      "lrs": (proc.first("step") or {}).get("lrs")},
        )

    # -- PyTorch's broadcast warning ------------------------------------------------------------------

    def _broadcast(self, proc: ProcessTrace) -> list[Finding]:
        found: dict[Any, Finding] = {}
        for warning in proc.of("warning"):
            text = warning.get("message") or ""
            match = _BROADCAST.search(text)
            if match is None:
                continue
            loc = warning.get("loc")
            key = tuple(loc) if loc else None
            if key in found:
                continue
            target, output = match.group(1).strip(), match.group(2).strip()
            found[key] = self.finding(
                f"The loss compares an output of shape [{output}] with a target of shape [{target}]: PyTorch "
                f"broadcasts them against each other (its warning: \"{text.split('. ')[0]}\"), so every output is "
                "compared with every target and the model can only learn their mean.",
                fix=_FIX_BROADCAST, location=loc, severity=Severity.ERROR, headline="output_shape",
                evidence={"output_shape": output, "target_shape": target, "warning": text[:300],
                          "step": warning.get("step")},
            )
        return list(found.values())

    # -- inputs and targets shuffled apart ----------------------------------------------------------

    def _shuffled_apart(self, proc: ProcessTrace) -> Finding | None:
        loaders = {e.get("id"): e for e in proc.of("loader")}
        epochs = [e for e in proc.of("loader_epoch") if e.get("batches") and e.get("step", 0) > e.get("step_start", 0)]
        for i, a in enumerate(epochs):
            for b in epochs[i + 1:]:
                la, lb = loaders.get(a.get("loader")), loaders.get(b.get("loader"))
                if la is None or lb is None or la is lb or a.get("step_start") != b.get("step_start"):
                    continue
                if abs(a["batches"] - b["batches"]) > 1 or not _shuffled(la) or not _shuffled(lb):
                    continue
                if la.get("dataset_len") != lb.get("dataset_len") or la.get("batch_size") != lb.get("batch_size"):
                    continue
                ia, ib = a.get("indices") or [], b.get("indices") or []
                n = min(len(ia), len(ib))
                if n == 0 or ia[:n] == ib[:n]:
                    continue
                same = sum(1 for x, y in zip(ia[:n], ib[:n]) if x == y)
                return self.finding(
                    f"Two DataLoaders over datasets of {la.get('dataset_len')} samples (lines {_line(la)} and "
                    f"{_line(lb)}) are shuffled independently and iterated together: sample {ia[0]} of one was "
                    f"paired with sample {ib[0]} of the other, and only {same} of the first {n} positions match. "
                    "If one holds the inputs and the other the targets, every input gets a random label.",
                    fix=_FIX_SHUFFLED_APART, location=lb.get("loc"), severity=Severity.WARNING,
                    headline="first_indices",
                    evidence={"loaders": [la.get("loc"), lb.get("loc")], "dataset_len": la.get("dataset_len"),
                              "first_indices": [ia[:8], ib[:8]], "positions_matching": same, "positions": n},
                )
        return None

    def _indexed_apart(self, proc: ProcessTrace) -> Finding | None:
        """The model's inputs and the loss's targets drawn from two tensors by different index vectors.

        The probe records, for batches made by ``A[index]``, which tensor and which rows they hold; here
        every backward where both the input and the target were so drawn must pair different rows of two
        tensors of the same length, over at least two steps. Certain (error) when both index vectors are
        slices of two different permutations of all the rows; otherwise it may be deliberate (info).
        """
        events = proc.of("batch_pairing")
        if len({e.get("step") for e in events}) < 2:
            return None
        for event in events:
            a, b = event.get("input") or {}, event.get("target") or {}
            if event.get("same_index") is not False or a.get("source") == b.get("source"):
                return None
            if a.get("rows") != b.get("rows") or a.get("n") != b.get("n"):
                return None
        certain = all(e["input"].get("permutation") and e["target"].get("permutation")
                      and e["input"].get("base") != e["target"].get("base") for e in events)
        first = events[0]
        a, b = first["input"], first["target"]
        batches = len(events)
        why = (f"the two index vectors are slices of two different permutations of the {a['rows']} rows"
               if certain else
               "this may be deliberate (the index vectors are not slices of two different permutations of all "
               "the rows)")
        return self.finding(
            f"The model's input and the loss's target are rows of two different tensors of {a['rows']} rows picked "
            f"by different index vectors: inputs at {display_loc(a.get('loc'))}, targets at {display_loc(b.get('loc'))}. "
            f"In all {batches} batches seen they differ (first batch: rows {a['head'][:4]} against {b['head'][:4]}), "
            f"and {why}: every input is paired with another sample's target.",
            fix=_FIX_INDEXED_APART, location=b.get("loc"), severity=Severity.ERROR if certain else Severity.INFO,
            headline="first_rows",
            evidence={"inputs_at": a.get("loc"), "targets_at": b.get("loc"), "rows": a["rows"], "batch": a["n"],
                      "batches": batches, "first_rows": [a["head"], b["head"]], "permutations": certain},
        )

    # -- cross-entropy over one column ------------------------------------------------------------

    def _single_column(self, proc: ProcessTrace) -> Finding | None:
        for event in proc.of("backward"):
            shape = _single_column_shape(event.get("graph") or [])
            if shape is None:
                continue
            losses = [e.get("loss") for e in proc.of("backward") if e.get("loss") is not None]
            return self.finding(
                f"Cross-entropy is computed over a single output column (shape {shape}): the log-softmax of one "
                f"value is always 0, so the loss is exactly 0 and no gradient flows "
                f"(losses seen: {', '.join(f'{abs(v):g}' for v in losses[:5])}).",
                fix=_FIX_SINGLE_COLUMN, location=event.get("loc"), severity=Severity.ERROR, headline="shape",
                evidence={"shape": shape, "losses": losses[:10]},
            )
        return None

    # -- a loss with no path to the parameters -----------------------------------------------------------

    def _detached(self, proc: ProcessTrace) -> Finding | None:
        steps = proc.of("step")
        backwards = proc.of("backward")
        if len(steps) < 2 or not backwards:
            return None
        if any(e.get("grad") for e in steps):
            return None
        if any((z.get("backwards") or 0) > 0 for z in proc.of("zero_grad")):
            return None  # gradients were cleared between backward() and step(): CC008's finding, not a detached loss
        if _only_outside_optimizers(proc):
            return None  # parameters outside every optimizer got gradients: the loss is connected (CC006's finding)
        leaf = [e for e in backwards if "graph" in e and not e["graph"]]
        first = backwards[0]
        how = ("the loss is a leaf tensor with no autograd history" if leaf else
               "no parameter of any optimizer received a gradient")
        losses = ", ".join(f"{e['loss']:g}" for e in backwards[:4] if e.get("loss") is not None)
        return self.finding(
            f"backward() at {display_loc(first.get('loc'))} reaches no parameter: in {len(steps)} optimizer steps "
            f"{how}, so nothing trains (losses: {losses}).",
            fix=_FIX_DETACHED, location=first.get("loc"), severity=Severity.ERROR, headline="loss_is_leaf",
            evidence={"steps": len(steps), "loss_is_leaf": bool(leaf), "backward_loc": first.get("loc")},
        )

    # -- zero or constant --------------------------------------------------------------------------------

    def _constant(self, proc: ProcessTrace, backwards: list[Event]) -> Finding | None:
        if _only_outside_optimizers(proc):
            return None  # nothing the optimizers hold gets a gradient, what does is in none (CC006's finding)
        losses = [e["loss"] for e in backwards]
        if len(losses) < 5 or not all(math.isfinite(v) for v in losses):
            return None
        low, high = min(losses), max(losses)
        if high - low > 1e-7 * max(1.0, abs(high)):
            return None
        loc = backwards[0].get("loc")
        if high == 0.0:
            message = (f"The loss is exactly 0 at all {len(losses)} backward() calls: there is nothing to "
                       "minimize and every gradient is zero.")
        else:
            message = (f"The loss is {high:.6g} at all {len(losses)} backward() calls, whatever the batch: the "
                       "output does not depend on the parameters or the input, or the parameters never change.")
        return self.finding(message, fix=_FIX_CONSTANT, location=loc, severity=Severity.ERROR, headline="losses",
                            evidence={"losses": losses[:10], "backwards": len(losses)})

    # -- initial value -------------------------------------------------------------------------------

    def _initial(self, backwards: list[Event]) -> Finding | None:
        first = next((e for e in backwards if e.get("graph")), None)
        if first is None or first.get("step", 0) != 0:
            return None
        expected, task = _expected_initial(first["graph"])
        if expected is None:
            return None
        loss = first["loss"]
        if not (loss > _INIT_FACTOR * expected and loss - expected > 1.0):
            return None
        return self.finding(
            f"The first loss is {loss:.4g}, {loss / expected:.1f}x the {expected:.4g} expected at initialization "
            f"for {task}: the untrained model is confidently wrong (large initial logits or unnormalized inputs).",
            fix=_FIX_INIT, location=first.get("loc"), severity=Severity.INFO, headline="first_loss",
            evidence={"first_loss": loss, "expected": expected, "task": task},
        )


def _single_column_shape(graph: list[dict]) -> list[int] | None:
    """The [B, 1] shape of a cross-entropy taken over one class column, if the graph has one."""
    for node in graph:
        attrs = node.get("attrs") or {}
        if node["name"] in _NLL:
            shape = (attrs.get("self") or {}).get("shape") or []
            if len(shape) >= 2 and shape[1] == 1:
                return shape
        if node["name"] == "LogSoftmaxBackward0" and 0 <= node.get("parent", -1) < len(graph):
            # Soft targets: -(target * log_softmax(x)).sum(1).mean(), with target [B, 1].
            parent = graph[node["parent"]]
            other = ((parent.get("attrs") or {}).get("other") or {})
            shape = other.get("shape") if isinstance(other, dict) else None
            if parent["name"] == "MulBackward0" and shape and len(shape) >= 2 and shape[attrs.get("dim", 1)] == 1:
                return shape
    return None


def _expected_initial(graph: list[dict]) -> tuple[float | None, str]:
    """The loss of a model predicting uniformly, for the loss at the root of the graph."""
    if not graph:
        return None, ""
    root = graph[0]
    attrs = root.get("attrs") or {}
    if root["name"] in _NLL and attrs.get("reduction") == 1 and not attrs.get("label_smoothing"):
        children = [n for n in graph if n.get("parent") == 0]
        if not any(n["name"] == "LogSoftmaxBackward0" for n in children):
            return None, ""
        shape = (attrs.get("self") or {}).get("shape") or []
        if len(shape) >= 2 and shape[1] >= 2:
            return math.log(shape[1]), f"{shape[1]}-class cross-entropy (ln {shape[1]})"
    if root["name"] == "BinaryCrossEntropyWithLogitsBackward0" and attrs.get("reduction") == 1:
        return math.log(2), "binary cross-entropy with logits (ln 2)"
    return None, ""


def _shuffled(loader: Event) -> bool:
    return "Random" in str(loader.get("sampler")) or "Random" in str(loader.get("batch_sampler_inner"))


def _line(loader: Event) -> Any:
    loc = loader.get("loc")
    return loc[1] if loc else "?"



def _only_outside_optimizers(proc: ProcessTrace) -> bool:
    """No parameter of any optimizer got a gradient, while parameters outside every optimizer did."""
    steps = proc.of("step")
    return not any(e.get("grad") for e in steps) and any(e.get("outside_grad") for e in steps)
