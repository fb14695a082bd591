"""CC014 batchnorm-tiny-batch: BatchNorm over a per-process batch of a few samples under DDP, without SyncBatchNorm."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from convcheck.findings import Finding, Severity
from convcheck.registry import Check
from convcheck.runtime.trace import ProcessTrace, RunTrace
from convcheck.static.context import StaticContext, call_name

#: A per-process batch at or below this many samples is "a few" (GroupNorm paper: BN degrades below ~16).
_DEFAULT_MAX_BATCH = 8

_FIX = (
    "Convert the batch-norm layers to SyncBatchNorm before wrapping the model in DDP "
    "(`model = nn.SyncBatchNorm.convert_sync_batchnorm(model)`), so that statistics are computed over the "
    "global batch; or use GroupNorm/LayerNorm, which do not depend on the batch size; or raise the per-process "
    "batch size."
)


class BatchnormTinyBatch(Check):
    """## What it does
    Under DDP, finds `BatchNorm` layers (not `SyncBatchNorm`) whose statistics are computed over a
    per-process batch of only a few samples (8 or fewer by default). The batch size is the training
    DataLoader's, or the loss's batch dimension.

    ## Why is this bad?
    `BatchNorm` normalizes with the mean and variance of the batch each process sees, not of the global
    batch DDP trains on. With 2-8 samples per process these estimates are noisy, the running statistics
    used at evaluation drift away from the training ones, and accuracy drops, sometimes sharply, even
    though the global batch looks large. It is advice: small models and fine-tuning can be fine.

    ## Example
    ```python
    model = DDP(ResNet())                  # BatchNorm2d layers
    loader = DataLoader(data, batch_size=4, sampler=DistributedSampler(data))
    ```

    ## Use instead
    ```python
    model = DDP(nn.SyncBatchNorm.convert_sync_batchnorm(ResNet()))
    loader = DataLoader(data, batch_size=4, sampler=DistributedSampler(data))
    ```

    ## Fix
    Use SyncBatchNorm (converted before the DDP wrapper; it runs on GPUs only), GroupNorm (also on the
    CPU), or a larger per-process batch. The
    threshold is set with `[tool.convcheck.checks.CC014] max-batch = 8`.

    ## Known limits
    The per-process batch comes from the training DataLoader or the loss's batch dimension; a model that runs
    batch norm on a different batch (micro-batches inside the forward) is judged by the outer batch.
    """

    code = "CC014"
    name = "batchnorm-tiny-batch"
    severity = Severity.INFO
    summary = "BatchNorm over a per-process batch of a few samples under DDP, without SyncBatchNorm."
    needs = frozenset({"graph"})

    def check_runtime(self, run: RunTrace, ctx: StaticContext) -> Iterable[Finding]:
        trainers = run.trainers
        proc = next(iter(trainers), None)
        if proc is None:
            return []
        world = max([p.world_size for p in trainers] + [run.world_size, len(trainers)])
        if world < 2:
            return []
        layers = [(_unwrapped(m["name"], model), m["cls"]) for model in proc.of("model")
                  for m in model.get("mode_modules", [])
                  if "BatchNorm" in m.get("cls", "") and "Sync" not in m.get("cls", "")]
        # Layers kept in eval mode (frozen statistics) do not use the batch's statistics.
        last = next((e for e in reversed(proc.of("backward")) if "eval_modules" in e or e.get("graph")), None)
        frozen = set((last or {}).get("eval_modules") or [])
        layers = [(n, c) for n, c in layers if n not in frozen and "module." + n not in frozen]
        if not layers:
            return []
        batch, source, loc = _batch_size(proc)
        limit = int(self.options.get("max-batch", self.options.get("max_batch", _DEFAULT_MAX_BATCH)))
        if batch is None or batch > limit:
            return []
        site = _batchnorm_site(ctx) if ctx is not None else None
        location = (ctx.display_path, site) if site else loc
        names = ", ".join(f"`{n}` ({c})" for n, c in layers[:4]) + (f" and {len(layers) - 4} more"
                                                                     if len(layers) > 4 else "")
        message = (
            f"{len(layers)} BatchNorm layer{'s' if len(layers) > 1 else ''} ({names}) "
            f"normalize{'' if len(layers) > 1 else 's'} over "
            f"{batch} sample{'s' if batch > 1 else ''} per process ({source}) while DDP trains on a global batch "
            f"of {batch * world} across {world} processes: batch statistics from {batch} samples are noisy and "
            "are not synchronized across ranks."
        )
        return [self.finding(
            message, fix=_FIX, location=location, severity=Severity.INFO, headline="per_process_batch",
            evidence={"per_process_batch": batch, "batch_source": source, "world_size": world,
                      "global_batch": batch * world, "batchnorm_layers": [n for n, _ in layers][:50],
                      "threshold": limit},
        )]


def _batch_size(proc: ProcessTrace) -> tuple[int | None, str, Any]:
    """The per-process training batch: the loader that training drew from, else the loss's batch dimension."""
    epochs = proc.of("loader_epoch")
    loaders = proc.of("loader")
    for loader in loaders:
        trained = any(e.get("loader") == loader.get("id") and e.get("step", 0) > e.get("step_start", 0)
                      for e in epochs)
        if loader.get("batch_size") and (trained or len(loaders) == 1):
            return int(loader["batch_size"]), "DataLoader batch_size", loader.get("loc")
    for event in proc.of("backward"):
        for node in event.get("graph") or []:
            shape = (node.get("attrs") or {}).get("self", {})
            if isinstance(shape, dict) and shape.get("shape"):
                return int(shape["shape"][0]), "the loss's batch dimension", event.get("loc")
    return None, "", None


def _batchnorm_site(ctx: StaticContext) -> int | None:
    """The line of the first BatchNorm layer built in the script."""
    for call in ctx.calls():
        last = (call_name(call) or "").rsplit(".", 1)[-1]
        if last.startswith(("BatchNorm", "LazyBatchNorm")):
            return call.lineno
    return None


def _unwrapped(name: str, model: dict) -> str:
    """A layer's name inside the DDP/DataParallel wrapper, as the user wrote the model."""
    if model.get("wrapper"):
        for prefix in ("module.", "_orig_mod."):
            if name.startswith(prefix):
                return name[len(prefix):]
    return name
