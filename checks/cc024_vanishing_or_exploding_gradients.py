"""CC024 vanishing-or-exploding-gradients: weight gradients that shrink or grow by orders of magnitude from
the last layer to the first, and ReLU layers dead for the whole batch."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from convcheck.findings import Finding, Severity
from convcheck.layerflow import dead_layer, grad_norms, gradflow_events
from convcheck.registry import Check
from convcheck.runtime.trace import Event, ProcessTrace, RunTrace
from convcheck.static.context import StaticContext

#: First-layer / last-layer gradient norm beyond 1e-6 (or 1e6): six orders of magnitude.
SPAN = 1e6
#: Steps with gradient norms needed before "every sampled step" means something.
MIN_STEPS = 3
#: The loss "does not decrease" when the median of its last 3 steps is above this share of its first 3.
FLAT = 0.95
#: A ReLU layer with at least this share of units zero for every sample (batches of MIN_BATCH or more).
DEAD_SHARE = 0.5
MIN_BATCH = 16

_FIX_VANISHING = (
    "Keep the gradient's scale through depth: use ReLU/GELU instead of sigmoid/tanh in hidden layers, initialize "
    "for the activation (`nn.init.kaiming_normal_` for ReLU, `xavier_uniform_` for tanh), add normalization "
    "(`nn.LayerNorm`/`nn.BatchNorm1d`) or residual connections (`x = x + block(x)`)."
)
_FIX_EXPLODING = (
    "Scale the initialization down (`nn.init.kaiming_normal_`/`xavier_uniform_` instead of large constants or "
    "std=1 normals), add normalization layers or residual connections, and clip gradients "
    "(`clip_grad_norm_(model.parameters(), 1.0)`)."
)
_FIX_DEAD = (
    "Bring the layer back to life: initialize its bias at 0 (not a large negative constant), use a kaiming "
    "initialization, normalize its input, lower the lr if it died after a large step, or use LeakyReLU/GELU, "
    "which let a gradient through for negative inputs."
)


@dataclass
class _Layer:
    name: str
    cls: str
    param: int | None
    trainable: bool


class VanishingOrExplodingGradients(Check):
    """## What it does
    On the first training steps, compares the gradient norms of the model's weight layers (Linear, Conv,
    RNN weights, in the order the forward calls them) and watches ReLU layers:

    - the first layer's weight gradient norm divided by the last layer's below 1e-6 (vanishing) or above
      1e6 (exploding): six orders of magnitude. Warning when that holds on every sampled step (3 or
      more, the steps whose gradient norms are measured) and the loss does not decrease (the median of its last
      3 steps is at least 95% of its first 3); info otherwise;
    - a ReLU layer whose output is all zero for the whole batch on every recorded forward (the first 3
      steps), or a weight layer whose input is (a ReLU called as `F.relu` inside `forward`): a dead layer
      passes no gradient below it. Warning when the weight layers below it got no gradient at all; info
      when something below still got one (another path, a skip connection);
    - a ReLU layer with half or more of its units zero for every sample of batches of 16 or more on every
      recorded forward: info.

    Left out of the comparison: frozen parameters, parameters with no gradient, embeddings (their sparse
    per-row gradients are legitimately small) and weights shared with an embedding (tied output layers),
    biases and normalization layers. A model whose first weight layer is frozen (a pretrained backbone)
    is not compared.

    ## Why is this bad?
    Backpropagation multiplies the gradient by each layer's weights and activation slope on its way down.
    Sigmoid (slope at most 0.25) or tanh layers without normalization, or a bad initialization, shrink or
    grow it geometrically with depth: the first layers then learn nothing (their updates are below float32's
    resolution) or take huge steps, and the loss stalls or blows up. A ReLU layer that outputs zero for every
    sample has zero slope everywhere: nothing below it ever trains again.

    ## Example
    ```python
    layers = []
    for _ in range(20):
        layers += [nn.Linear(64, 64), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(64, 2))
    ```

    ## Use instead
    ```python
    layers = []
    for _ in range(20):
        layers += [nn.Linear(64, 64), nn.LayerNorm(64), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(64, 2))
    ```

    ## Fix
    Use non-saturating activations with a matching initialization, normalization layers or residual
    connections; for a dead layer, a bias that does not start far below zero. Clip gradients that explode.

    ## Known limits
    Needs the `gradflow` recorder: on the first 3 steps (two training forwards each) it hooks the model's
    weight layers and `nn.ReLU`/`nn.ReLU6` modules for one forward. `F.relu`/`torch.relu` called inside
    `forward` are not seen as layers; their dead output is seen only as the all-zero input of the next
    weight layer (not through pooling, reshapes that mix in other values, or a residual sum). Dead units are
    counted per feature (the last dimension) of 2- and 3-dimensional outputs and per channel of 4- and
    5-dimensional ones, so a Conv1d's channels are not counted. Gradient norms are those of the sampled steps
    (1-5, 10, 20, ...); the layer order is the order of the first calls in the first forward; weights a
    model uses outside Linear/Conv/RNN modules (`F.linear(x, self.w)`, attention's `in_proj_weight`) are
    not compared. A `torch.compile`'d model is not hooked (hooks added and removed would recompile it).
    """

    code = "CC024"
    name = "vanishing-or-exploding-gradients"
    severity = Severity.WARNING
    summary = "Weight gradients that shrink or grow 1e6x from the last layer to the first; dead ReLU layers."
    needs = frozenset({"gradflow"})

    def check_runtime(self, run: RunTrace, ctx: StaticContext) -> Iterable[Finding]:
        proc = next(iter(run.trainers), None)
        if proc is None:
            return []
        events = gradflow_events(proc)
        if not events:
            return []
        loc = events[0].get("loc")
        norms = grad_norms(proc)
        order = events[0].get("layers") or []
        findings = []
        dead = self._dead(proc, events, order, loc)
        findings.extend(dead)
        if not any(f.severity is Severity.WARNING for f in dead):
            span = self._span(proc, order, norms, loc)
            if span is not None:
                findings.append(span)
        return findings

    # -- the span of weight gradient norms -------------------------------------------------------------

    def _span(self, proc: ProcessTrace, order: list[Event], norms: dict[int, dict[int, float]],
              loc: Any) -> Finding | None:
        layers = _compared_layers(proc, order)
        if len(layers) < 3 or not layers[0].trainable:
            return None  # a frozen (pretrained) first layer: its gradient is not the point
        layers = [layer for layer in layers if layer.trainable]
        first, last = layers[0], layers[-1]
        ratios = []
        for step, by_param in sorted(norms.items()):
            a, b = by_param.get(first.param), by_param.get(last.param)  # type: ignore[arg-type]
            if a is None or b is None or not (a > 0 and b > 0) or not (math.isfinite(a) and math.isfinite(b)):
                continue
            ratios.append((step, a / b))
        if not ratios:
            return None
        low = [r for _, r in ratios if r < 1 / SPAN]
        high = [r for _, r in ratios if r > SPAN]
        beyond, vanishing = (low, True) if len(low) >= len(high) else (high, False)
        if len(beyond) * 2 < len(ratios) or not beyond:
            return None
        flat, curve = _loss_flat(proc)
        every = len(beyond) == len(ratios) and len(ratios) >= MIN_STEPS
        severity = Severity.WARNING if every and flat else Severity.INFO
        typical = statistics.median(r for _, r in ratios)
        orders = abs(math.log10(typical))
        what = "vanishing" if vanishing else "exploding"
        message = (
            f"Gradients are {what} through the {len(layers)} weight layers from `{last.name}` ({last.cls}, the "
            f"last) down to `{first.name}` ({first.cls}, the first): the first layer's gradient norm is "
            f"{typical:.2g} times the last layer's ({orders:.0f} orders of magnitude) on {len(beyond)} of "
            f"{len(ratios)} sampled steps."
        )
        if severity is Severity.WARNING:
            message += f" The loss is not decreasing ({curve})."
        else:
            why = []
            if not every:
                why.append(f"not on every sampled step ({len(beyond)} of {len(ratios)}, at least {MIN_STEPS} "
                           "needed)")
            if not flat:
                why.append(f"the loss is decreasing ({curve})")
            message += f" Advice only: {' and '.join(why)}."
        per_layer = {layer.name: [_rounded(norms[s].get(layer.param))  # type: ignore[arg-type]
                                  for s in sorted(norms)][:5] for layer in layers[:40]}
        return self.finding(
            message, fix=_FIX_VANISHING if vanishing else _FIX_EXPLODING, location=loc, severity=severity,
            headline="ratio",
            evidence={"direction": what, "first_layer": first.name, "last_layer": last.name,
                      "ratio": typical, "ratios": [[s, r] for s, r in ratios], "layers": len(layers),
                      "loss_flat": flat, "grad_norms": per_layer},
        )

    # -- dead layers -------------------------------------------------------------------------------------

    def _dead(self, proc: ProcessTrace, events: list[Event], order: list[Event], loc: Any) -> list[Finding]:
        findings = []
        found = dead_layer(proc)
        if found is not None:
            layer, below = found.layer, found.below
            how = (f"`{layer['name']}` ({layer['cls']}) outputs zero for every sample" if layer["kind"] == "relu"
                   else f"the input of `{layer['name']}` ({layer['cls']}) is zero for every sample (a ReLU "
                        "before it, applied inside forward, is dead)")
            message = f"{how} in all {found.forwards} training forwards recorded on the first steps"
            if found.blocks_all:
                severity = Severity.WARNING
                message += (f": no gradient passes it, and the {len(below)} weight layer"
                            f"{'s' if len(below) > 1 else ''} below it ("
                            f"{', '.join(_quoted(w) for w in below[:3])}"
                            f"{' ...' if len(below) > 3 else ''}) got exactly zero gradient.")
            elif not below:
                severity = Severity.WARNING if layer["kind"] == "relu" else Severity.INFO
                message += ": the layer passes no gradient and gives the layers after it nothing to learn from."
            else:
                severity = Severity.INFO
                shown = ", ".join(f"`{n}`" for n in found.flowing[:3]) or "not measured"
                message += f". Advice only: layers below it still got a gradient ({shown}), through another path."
            if found.also_dead:
                message += f" Also dead: {', '.join(f'`{n}`' for n in found.also_dead[:5])}."
            findings.append(self.finding(
                message, fix=_FIX_DEAD, location=loc, severity=severity, headline="dead_layer",
                evidence={"dead_layer": layer["name"], "kind": layer["kind"], "cls": layer["cls"],
                          "forwards": found.forwards, "layers_below": [w["name"] for w in below][:20],
                          "below_with_gradient": found.flowing[:20], "also_dead": found.also_dead[:20]},
            ))
        dead_names = {found.layer["name"], *found.also_dead} if found is not None else set()
        if len({e.get("step") for e in events}) < 2:
            return findings
        for layer in order:
            if layer.get("kind") != "relu" or layer["name"] in dead_names:
                continue
            seen = [next((x for x in e["layers"] if x["name"] == layer["name"]), None) for e in events]
            if any(x is None or x.get("dead_units") is None or x.get("batch", 0) < MIN_BATCH for x in seen):
                continue
            share = min(x["dead_units"] for x in seen)  # type: ignore[union-attr]
            if share < DEAD_SHARE:
                continue
            findings.append(self.finding(
                f"{share:.0%} of the units of `{layer['name']}` ({layer['cls']}) are zero for every sample in all "
                f"{len(events)} training forwards recorded on the first steps: those units pass no gradient. "
                "Advice: a large share of dead ReLU units wastes capacity; it may be deliberate sparsity.",
                fix=_FIX_DEAD, location=loc, severity=Severity.INFO, headline="dead_share",
                evidence={"layer": layer["name"], "dead_share": share, "forwards": len(events)},
            ))
            break
        return findings


def _rounded(value: float | None) -> float | None:
    """A gradient norm for the evidence: 4 significant digits; None where it was not measured or not finite."""
    return float(f"{value:.4g}") if value is not None and math.isfinite(value) else None


def _quoted(layer: Event) -> str:
    return f"`{layer['name']}`"


def _compared_layers(proc: ProcessTrace, order: list[Event]) -> list[_Layer]:
    """Weight layers in forward order, each weight once; no embeddings nor weights tied to one; only weights
    that got a gradient. The first may be frozen (then the caller gives up)."""
    embedded = {layer.get("param") for layer in order if layer.get("kind") == "embedding"}
    frozen = {p["id"] for m in proc.of("model") for p in m.get("params", []) if not p.get("requires_grad", True)}
    with_grad = {i for e in proc.of("step") for i in e.get("grad") or []}
    layers, seen = [], set()
    for layer in order:
        param = layer.get("param")
        if layer.get("kind") != "weight" or param is None or param in seen or param in embedded:
            continue
        seen.add(param)
        trainable = layer.get("trainable", True) and param not in frozen
        if trainable and param not in with_grad:
            continue
        layers.append(_Layer(name=layer["name"], cls=layer["cls"], param=param, trainable=trainable))
    return layers


def _loss_flat(proc: ProcessTrace) -> tuple[bool, str]:
    """Whether the loss did not decrease over the run (median of the last 3 steps against the first 3)."""
    losses = [v for s, v in proc.losses_per_step().items() if s <= max(proc.steps, 1) and math.isfinite(v)]
    if len(losses) < 6:
        return False, "too few steps to tell"
    start, end = statistics.median(losses[:3]), statistics.median(losses[-3:])
    return end >= FLAT * start, f"{start:.4g} over the first 3 steps, {end:.4g} over the last 3"
