"""TensorBoard event files from a run's traces: one folder per run, one sub-run per rank.

Tags are grouped by section so TensorBoard's UI shows them together:
``train/`` loss and lr, ``grad_norm/`` global and per layer, ``update_ratio/`` per layer
(‖Δw‖/‖w‖), ``amp/`` GradScaler scale and skipped steps, ``nonfinite/`` the share of
non-finite gradient values, ``weights/`` and ``grads/`` histograms, and ``convcheck/findings``
as text. Layer statistics come from the probe's sampled steps (the first five and every
tenth; update ratios on the first three and every fiftieth).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from convcheck.findings import Report
from convcheck.paths import display_loc
from convcheck.runtime.trace import ProcessTrace, RunTrace


def run_folder(root: Path, script: str) -> Path:
    """A new folder for this run under ``root``: ``<script>-<date>-<time>[-n]``."""
    stem = Path(script.split()[0]).stem
    base = root / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder, n = base, 1
    while folder.exists():
        n += 1
        folder = Path(f"{base}-{n}")
    return folder


def _optimizer_params(proc: ProcessTrace) -> dict[int, list[int]]:
    return {
        opt["opt"]: [pid for group in opt["groups"] for pid in group["params"]] for opt in proc.of("optimizer")
    }


def write_process(writer: Any, proc: ProcessTrace, report: Report) -> None:
    """Every scalar, histogram and text of one process."""
    names = proc.param_names()
    opt_params = _optimizer_params(proc)
    for step, loss in proc.losses_per_step().items():
        if step > proc.steps:
            break  # the forward that met the step budget: its step never ran
        writer.add_scalar("train/loss", loss, step)
    for event in proc.of("step"):
        step = event["n"]
        for group, lr in enumerate(event.get("lrs", [])):
            if isinstance(lr, (int, float)):
                writer.add_scalar(f"train/lr_group{group}", lr, step)
        if "grad_norms" in event:
            grad_ids = event["grad"]
            norms = event["grad_norms"]
            total = math.sqrt(sum(n * n for n in norms)) if all(math.isfinite(n) for n in norms) else float("inf")
            writer.add_scalar("grad_norm/global", total, step)
            for pid, norm in zip(grad_ids, norms):
                writer.add_scalar(f"grad_norm/{names.get(pid, f'param{pid}')}", norm, step)
            writer.add_scalar("nonfinite/grad_fraction", event.get("nonfinite_grad_fraction", 0.0), step)
        if "update_norms" in event:
            ids = opt_params.get(event["opt"], [])
            for pid, update, weight in zip(ids, event["update_norms"], event["param_norms"]):
                if update is not None and weight > 0:
                    writer.add_scalar(f"update_ratio/{names.get(pid, f'param{pid}')}", update / weight, step)
    skipped = 0
    for event in proc.of("scaler"):
        if event["call"] == "update" and event.get("scale") is not None:
            writer.add_scalar("amp/scale", event["scale"], event["step"])
        if event["call"] == "step" and event.get("skipped"):
            skipped += 1
            writer.add_scalar("amp/skipped_steps", skipped, event["step"])
    for event in proc.of("histograms"):
        for tensor in event["tensors"]:
            if not tensor["num"]:
                continue
            section = "weights" if tensor["kind"] == "weight" else "grads"
            pid = tensor["param"]
            writer.add_histogram_raw(
                f"{section}/{names.get(pid, f'param{pid}')}",
                min=tensor["min"], max=tensor["max"], num=tensor["num"], sum=tensor["sum"],
                sum_squares=tensor["sum_squares"], bucket_limits=tensor["limits"], bucket_counts=tensor["counts"],
                global_step=event["step"],
            )
    writer.add_text("convcheck/findings", findings_markdown(report), 0)


def findings_markdown(report: Report) -> str:
    """The findings as a short markdown list (TensorBoard's text tab renders it)."""
    if not report.findings:
        return f"No findings. Run {report.run.status}."
    lines = []
    for f in report.findings:
        where = f" ({display_loc(f.location)})" if f.location else ""
        lines.append(f"- **{f.severity.value.upper()} {f.code} {f.name}**{where}: {f.message} *Fix:* {f.fix}")
    return "\n".join(lines)


def write_tensorboard(trace: RunTrace, report: Report, root: Path) -> Path:
    """Write event files for every process that trained; return the run's folder."""
    from torch.utils.tensorboard import SummaryWriter

    folder = run_folder(root, report.script)
    for proc in trace.trainers:
        label = f"rank{proc.rank}" if proc.rank is not None else f"pid{proc.pid}"
        if len(trace.trainers) == 1 and proc.rank is None:
            label = "rank0"
        writer = SummaryWriter(log_dir=str(folder / label))
        try:
            write_process(writer, proc, report)
        finally:
            writer.close()
    return folder
