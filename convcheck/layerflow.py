"""Reading the ``gradflow`` recorder's evidence: a layer dead for the whole batch on the first steps.

Shared by CC024, which reports the dead layer, and CC006, which then does not report the layers below it as
"never given a gradient": one bug, one finding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from convcheck.runtime.trace import Event, ProcessTrace


@dataclass
class DeadLayer:
    """The first layer (in forward order) dead in every recorded training forward, and what lies below it."""

    layer: Event
    forwards: int
    #: Weight layers called before it (forward order), and those of them that still got a gradient.
    below: list[Event] = field(default_factory=list)
    flowing: list[str] = field(default_factory=list)
    #: Whether any of the layers below had its gradient norm measured.
    measured: bool = False
    #: Other ReLU layers dead throughout (weight layers fed by a dead one are its consequence, not listed).
    also_dead: list[str] = field(default_factory=list)

    @property
    def blocks_all(self) -> bool:
        """Nothing below it got a gradient (measured)."""
        return bool(self.below) and self.measured and not self.flowing


def gradflow_events(proc: ProcessTrace) -> list[Event]:
    """The recorded forwards of the first model recorded (a second model, a teacher, is left out)."""
    events = proc.of("gradflow")
    if not events:
        return []
    root = events[0].get("root")
    return [e for e in events if e.get("root") == root]


def grad_norms(proc: ProcessTrace) -> dict[int, dict[int, float]]:
    """Per sampled step: gradient norm by parameter id."""
    found: dict[int, dict[int, float]] = {}
    for step in proc.of("step"):
        grads, norms = step.get("grad") or [], step.get("grad_norms")
        if norms is None or len(norms) != len(grads):
            continue
        found.setdefault(step.get("n", 0), {}).update(zip(grads, norms))
    return found


def dead_layer(proc: ProcessTrace) -> DeadLayer | None:
    """A ReLU whose output, or a weight layer (not the first) whose input, is all zero in every recorded forward."""
    events = gradflow_events(proc)
    if len({e.get("step") for e in events}) < 2:
        return None
    order = events[0].get("layers") or []
    weights = [layer for layer in order if layer.get("kind") == "weight"]
    first_weight = weights[0]["name"] if weights else None
    dead = []
    for position, layer in enumerate(order):
        name, kind = layer["name"], layer["kind"]
        if kind == "embedding" or (kind == "weight" and name == first_weight):
            continue
        seen = [next((x for x in e["layers"] if x["name"] == name), None) for e in events]
        if any(x is None or not x.get("measured") or x["zero_calls"] < x["calls"] for x in seen):
            continue
        dead.append((position, layer))
    if not dead:
        return None
    position, layer = dead[0]
    norms = grad_norms(proc)
    below = [w for w in order[:position] if w.get("kind") == "weight" and w.get("param") is not None]
    flowing = [w["name"] for w in below if any(by_param.get(w["param"], 0.0) > 0 for by_param in norms.values())]
    measured = any(w["param"] in by_param for w in below for by_param in norms.values())
    return DeadLayer(layer=layer, forwards=len(events), below=below, flowing=flowing, measured=measured,
                     also_dead=[lay["name"] for _, lay in dead[1:] if lay["kind"] == "relu"])


def blocked_params(proc: ProcessTrace) -> set[int]:
    """Parameters of the weight layers below a dead layer that got no gradient through it."""
    found = dead_layer(proc)
    if found is None or not found.blocks_all:
        return set()
    return {w["param"] for w in found.below}
