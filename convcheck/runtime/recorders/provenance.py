"""Where the model's input batch and the loss's target came from, when both were drawn by index (CC012)."""

from __future__ import annotations

from typing import Any

from convcheck.runtime.fields import first_tensor
from convcheck.runtime.provenance import Provenance, loss_target
from convcheck.runtime.recorders.base import Recorder

#: Backwards whose input and target provenance is recorded; recording stops after them (or after
#: twice this many backwards with none), and indexing is left alone from then on.
_MAX_PAIRINGS = 8


class BatchProvenanceRecorder(Recorder):
    """``Tensor.__getitem__`` with an integer index vector: which rows of which tensor a batch holds. At each
    backward, when both the model's input and the loss's target were drawn that way, a ``batch_pairing`` event
    says from where, and whether by the same index vector."""

    name = "provenance"
    events = ("batch_pairing",)

    def __init__(self, probe: Any) -> None:
        super().__init__(probe)
        self.provenance = Provenance()
        self.batch_input: Any = None
        self.pairings = 0

    def install(self, torch: Any, patches: Any) -> None:
        self.provenance.install(torch, patches)

    def on_root_forward(self, module: Any, args: Any) -> None:
        self.batch_input = self.provenance.find(first_tensor(args)) if self.provenance.picks else None

    def on_backward(self, loss: Any) -> None:
        provenance, probe = self.provenance, self.probe
        if not provenance.active:
            return
        picked = self.batch_input
        self.batch_input = None
        target = loss_target(getattr(loss, "grad_fn", None)) if picked is not None else None
        found = provenance.find(target) if target is not None else None
        if picked is not None and found is not None:
            (pick_in, index_in), (pick_tg, index_tg) = picked, found
            self.pairings += 1
            probe.emit("batch_pairing", n=probe.backward_count, step=probe.step_count,
                       same_index=provenance.same(index_in, index_tg),
                       input=provenance.describe(pick_in, index_in), target=provenance.describe(pick_tg, index_tg))
        if self.pairings >= _MAX_PAIRINGS or (self.pairings == 0 and probe.backward_count >= 2 * _MAX_PAIRINGS):
            provenance.clear()
