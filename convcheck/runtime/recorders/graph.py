"""The loss's autograd graph, summarized on sampled backward passes (CC003, CC005, CC010, CC012, CC014)."""

from __future__ import annotations

from typing import Any

from convcheck.runtime.graph import summarize_graph
from convcheck.runtime.recorders.base import Recorder


class LossGraphRecorder(Recorder):
    """On the sampled backward passes (the first ones, then every few), a summary of the loss's graph:
    its reductions (means and their divisors), softmax/log-softmax feeding NLL, the counted targets of
    mean NLL. Written as the ``graph`` field of those ``backward`` events; it patches nothing itself."""

    name = "graph"
    events = ("backward",)

    def summarize(self, tensor: Any) -> dict[str, Any]:
        """The summary of the graph that ends in ``tensor``."""
        return summarize_graph(tensor.grad_fn)
